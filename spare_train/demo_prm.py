"""The main job's PRM part: train the tiny PRM, export it, score held-out candidates, evaluate.

Every step goes through the user-facing paths: the recipe through ``spare-train fit``'s CLI, the
``spare-train export`` command, ``spare_train.load_prm(...).score`` and the metric functions of
``spare-train evaluate``. The first-error threshold τ is chosen on the validation split and then
applied, unchanged, to the held-out test questions. Beside the PRM's step AUROC the table shows a
position-only baseline (score = −step index: later steps are more often wrong), so a reader sees
how much is learned beyond where errors tend to sit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

RECIPE = "bundled:recipes/prm/tiny.yaml"
TEST = "bundled:synth/test.jsonl"


def position_baseline_auroc(records: list) -> float:
    """Step AUROC of scoring each step by −(its index): no model, only position."""
    from spare_train.prm.metrics import step_metrics
    from spare_train.records import IGNORE, is_label

    scores, labels = [], []
    for r in records:
        for i, y in enumerate(r.labels):
            scores.append(-float(i))
            labels.append(float(y) if is_label(y) else IGNORE)
    return step_metrics(torch.tensor(scores), torch.tensor(labels))["auroc"]


def fit_and_export(recipe: str, run_dir: Path, export_dir: Path, extra_args: list[str] | None, console: Any) -> Any:
    """``spare-train fit --config recipe`` then ``spare-train export --merge``; the LightningCLI,
    or None when training stopped before the recipe's ``max_steps`` (its figures would not be the
    recipe's)."""
    from spare_train.assets import resolve_bundled
    from spare_train.cli import lightning_cli
    from spare_train.export import export

    console.rule(f"training: spare-train fit --config {recipe}")
    t0 = time.time()
    cli = lightning_cli(["fit", "--config", resolve_bundled(recipe), "--trainer.default_root_dir", str(run_dir),
                         *(extra_args or [])])  # fmt: skip
    train_s = time.time() - t0
    trainer = cli.trainer
    steps, planned = trainer.global_step, trainer.max_steps
    if planned > 0 and steps < planned:
        console.print(f"[bold red]training stopped after {steps} of {planned} optimizer steps "
                      "(the figures below would not be the recipe's); not evaluating[/]")  # fmt: skip
        return None
    ckpt = trainer.checkpoint_callback.last_model_path or trainer.checkpoint_callback.best_model_path
    console.print(f"trained {steps} optimizer steps in {train_s / 60:.1f} min; checkpoint {ckpt}")
    export(ckpt, str(export_dir), merge=True, overwrite=True)
    return cli


def prm_demo(out: Path, recipe: str = RECIPE, extra_args: list[str] | None = None) -> int:
    from rich.console import Console

    from spare_train.formats import read_records
    from spare_train.prm.evaluate import evaluate_scores, format_table
    from spare_train.prm.scoring import load_prm

    console = Console()
    export_dir = out / "prm"
    cli = fit_and_export(recipe, out / "prm-run", export_dir, extra_args, console)
    if cli is None:
        return 1
    steps = cli.trainer.global_step
    prm = load_prm(export_dir)

    val_records = cli.datamodule.records["val"]
    test_records, _ = read_records("spare", TEST)
    tau = evaluate_scores(val_records, prm.score(val_records, batch_size=64))["first_error/tau"]
    test_scores = prm.score(test_records, batch_size=64)
    metrics = evaluate_scores(test_records, test_scores, tau=tau)
    baseline = position_baseline_auroc([r for r in test_records if not r.is_reference])
    with (out / "scores.jsonl").open("w") as f:
        for r, s in zip(test_records, test_scores, strict=True):
            f.write(json.dumps({"id": r.id, "step_scores": s}) + "\n")
    result = {**metrics, "baseline/position_step_auroc": baseline, "train/num_optimizer_steps": float(steps)}
    (out / "metrics.json").write_text(json.dumps(result, indent=2))

    console.rule(f"held-out evaluation: {len(test_records)} candidates of {int(metrics['bon/num_questions'])} "
                 f"questions ({TEST})")  # fmt: skip
    console.print(format_table(result))
    console.print(
        f"\ntrained {steps} optimizer steps | held-out step AUROC {metrics['step/auroc']:.3f} "
        f"(position-only baseline {baseline:.3f}) | first-error F1 {metrics['first_error/f1']:.3f} "
        f"(τ={tau:.2f}, chosen on validation) | best-of-N (min) {metrics['bon/min']:.3f} vs random pick "
        f"{metrics['bon/random']:.3f} (oracle {metrics['bon/oracle']:.3f})"
    )
    console.print(f"exported PRM: {export_dir} (see its README.md); metrics: {out / 'metrics.json'}")
    return 0
