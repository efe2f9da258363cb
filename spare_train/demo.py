"""The README's main job: ``make demo`` (``python -m spare_train.demo``).

Reads the bundled synthetic SPARE data, reports what was kept and repaired, tokenises it with the
tiny tokenizer and shows rendered examples with each step tag's label. Then it trains the tiny
PRM, exports it, scores held-out candidates and prints the evaluation next to a position-only
baseline (see :mod:`spare_train.demo_prm`). Runs the same installed or checked out: the data and
the recipe are the ones shipped in the package (``bundled:…``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TRAIN = "bundled:synth/train.jsonl"


def data_demo(out: Path) -> None:
    from spare_train.data import PRMDataModule
    from spare_train.tokenize import show_example

    print(f"== reading {TRAIN} (format: spare)")
    dm = PRMDataModule(train=TRAIN, tokenizer="tiny", val_fraction=0.1, seed=0, cache_dir=str(out / "cache"))
    dm.setup("fit")
    print("\n== two rendered training examples (each step tag shown as ⟨label⟩)")
    for i in range(2):
        print(show_example(dm.datasets["train"][i], dm.tokenizer), "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spare_train.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo", help="where to write the demo's files")
    parser.add_argument("--data-only", action="store_true", help="stop after the data part")
    parser.add_argument(
        "fit_args", nargs="*", metavar="-- FIT_ARG",
        help="after --, options for the training run, e.g. -- --model.init_args.first_error_steps=0",
    )  # fmt: skip
    args = parser.parse_args(argv)
    from spare_train.quiet import silence_third_party

    silence_third_party()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_demo(out)
    if args.data_only:
        return 0
    from spare_train.demo_prm import prm_demo

    return prm_demo(out, extra_args=args.fit_args)


if __name__ == "__main__":
    sys.exit(main())
