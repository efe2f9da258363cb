"""The README's main job: ``make demo`` (``python -m spare_train.demo``).

Reads the bundled synthetic SPARE data, reports what was kept and repaired, tokenises it with the
tiny tokenizer and shows rendered examples with each step tag's label. When the PRM stack is
installed, it then trains the tiny PRM, exports it, scores held-out candidates and prints the
evaluation (see :mod:`spare_train.demo_prm`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "synth"


def data_demo(out: Path) -> None:
    from spare_train.data import SpareDataModule
    from spare_train.tokenize import show_example

    print(f"== reading {DATA / 'train.jsonl'} (format: spare)")
    dm = SpareDataModule(train=str(DATA / "train.jsonl"), tokenizer="tiny", val_fraction=0.1, seed=0,
                         cache_dir=str(out / "cache"))
    dm.setup("fit")
    print(dm.report.summary())
    for split, ds in dm.datasets.items():
        print(f"{split}: {len(ds)} tokenised examples")
    print("\n== two rendered training examples (each step tag shown as ⟨label⟩)")
    for i in range(2):
        print(show_example(dm.datasets["train"][i], dm.tokenizer), "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spare_train.demo", description=__doc__)
    parser.add_argument("--out", default="outputs/demo", help="where to write the demo's files")
    parser.add_argument("--data-only", action="store_true", help="stop after the data part")
    parser.add_argument(
        "fit_args", nargs="*", metavar="-- FIT_ARG",
        help="after --, options for the training run, e.g. -- --model.init_args.first_error_steps=0",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_demo(out)
    if args.data_only:
        return 0
    from spare_train.demo_prm import prm_demo

    return prm_demo(out, extra_args=args.fit_args)


if __name__ == "__main__":
    sys.exit(main())
