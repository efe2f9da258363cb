"""The main job's PRM part: train the tiny PRM, export it, score held-out candidates, evaluate.

Every step goes through the user-facing paths: the recipe through LightningCLI (``spare-train
fit``), ``spare-train export``, ``spare_train.load_prm(...).score`` and the metric functions of
``spare-train evaluate``. The first-error threshold τ is chosen on the validation split and then
applied, unchanged, to the held-out test questions.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "prm" / "tiny.yaml"
TEST = ROOT / "data" / "synth" / "test.jsonl"


def _checkpoint(run_dir: Path) -> Path:
    ckpts = sorted(run_dir.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise FileNotFoundError(f"training wrote no checkpoint under {run_dir}")
    return ckpts[-1]


def prm_demo(out: Path, recipe: Path = RECIPE, extra_args: list[str] | None = None) -> int:
    from rich.console import Console

    from spare_train.evaluate import evaluate_scores, format_table
    from spare_train.export import main as export_main
    from spare_train.formats import read_records
    from spare_train.lightning_cli import make_cli
    from spare_train.scoring import load_prm

    console = Console()
    run_dir = out / "prm-run"
    console.rule(f"training the tiny PRM: spare-train fit --config {recipe.relative_to(ROOT)}")
    t0 = time.time()
    args = ["fit", "--config", str(recipe), "--trainer.default_root_dir", str(run_dir),
            "--trainer.logger.init_args.save_dir", str(run_dir), *(extra_args or [])]
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the demo's own options are not the CLI's
        cli = make_cli(args)
    train_s = time.time() - t0
    ckpt = _checkpoint(run_dir)
    console.print(f"trained in {train_s / 60:.1f} min; checkpoint {ckpt}")

    console.rule("export (merged Hugging Face folder) and scoring")
    export_dir = out / "prm"
    export_main([str(ckpt), str(export_dir), "--merge"])
    prm = load_prm(export_dir)

    val_records = cli.datamodule.records["val"]
    test_records, report = read_records("spare", str(TEST))
    val_scores = prm.score(val_records, batch_size=64)
    tau = evaluate_scores(val_records, val_scores)["first_error/tau"]
    test_scores = prm.score(test_records, batch_size=64)
    metrics = evaluate_scores(test_records, test_scores, tau=tau)
    with (out / "scores.jsonl").open("w") as f:
        for r, s in zip(test_records, test_scores, strict=True):
            f.write(json.dumps({"id": r.id, "step_scores": s, "score": min(s)}) + "\n")
    (out / "metrics.json").write_text(json.dumps({**metrics, "train_minutes": train_s / 60}, indent=2))

    console.rule(f"held-out evaluation: {len(test_records)} candidates of {int(metrics['bon/num_questions'])} "
                 f"questions ({TEST.relative_to(ROOT)})")
    console.print(format_table(metrics))
    console.print(
        f"\nheld-out step AUROC {metrics['step/auroc']:.3f} | first-error F1 {metrics['first_error/f1']:.3f} "
        f"(τ={tau:.2f}, chosen on validation) | best-of-N (min) {metrics['bon/min']:.3f} vs random pick "
        f"{metrics['bon/random']:.3f} (oracle {metrics['bon/oracle']:.3f})"
    )
    console.print(f"exported PRM: {export_dir} (see its README.md); metrics: {out / 'metrics.json'}")
    return 0
