"""``spare-train evaluate``: score annotated records with an exported PRM and report its metrics.

    spare-train evaluate --model runs/prm/export --data data/test.jsonl --tau 0.42 --output m.json

The maths lives in :mod:`spare_train.prm.metrics`; this module reads, scores, and presents.
Reference solutions (records with ``is_reference``, e.g. GSM8K's gold answer) are left out by
default: they are not candidates, and counting them makes the oracle 100 % and lets best-of-N
pick the gold answer (``include_references`` puts them back).
:func:`evaluate_scores` is the model-free part (records + scores -> metrics) that tests call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from spare_train.prm.metrics import DEFAULT_TAU_GRID, prm_report
from spare_train.records import StepRecord

#: Row titles of the table, by metric key; keys not listed are shown under their own name.
TITLES: dict[str, str] = {
    "step/acc": "step accuracy",
    "step/f1": "step F1 (correct class)",
    "step/f1_error": "step F1 (error class)",
    "step/auroc": "step AUROC",
    "step/num_steps": "labeled steps (scored)",
    "step/num_unscored": "unscored steps (cut by max_length)",
    "first_error/f1": "first-error F1",
    "first_error/acc_error": "first-error acc, erroneous solutions",
    "first_error/acc_correct": "first-error acc, correct solutions",
    "first_error/tau": "tau",
    "first_error/num_error": "erroneous solutions",
    "first_error/num_correct": "correct solutions",
    "bon/oracle": "oracle (pass@N)",
    "bon/random": "random pick",
    "bon/num_questions": "questions",
    "vote/majority": "majority vote",
    "baseline/position_step_auroc": "step AUROC of score = −step index (no model)",
    "train/num_optimizer_steps": "optimizer steps trained",
}


def evaluate_scores(
    records: Sequence[StepRecord],
    step_scores: Sequence[Sequence[float | None]],
    tau: float | None = None,
    threshold: float = 0.5,
    tau_grid: Sequence[float] = DEFAULT_TAU_GRID,
    include_references: bool = False,
) -> dict[str, float]:
    """All metrics of :func:`spare_train.prm.metrics.prm_report` for ``records`` scored ``step_scores``.

    ``step_scores[i]`` holds one score per step of ``records[i]`` (``None``: unscored). Labels
    come from ``record.labels`` (``None`` = unlabeled), best-of-N from ``group_id``, ``outcome``
    and ``answer``. References are left out unless ``include_references``. With ``tau=None``
    the first-error threshold is chosen on these records (``first_error/tau_chosen`` = 1), which
    flatters the F1.
    """
    if len(records) != len(step_scores):
        raise ValueError(f"{len(step_scores)} score lists for {len(records)} records")
    for r, s in zip(records, step_scores):
        if len(s) != r.num_steps:
            raise ValueError(f"record {r.id}: {len(s)} scores for {r.num_steps} steps")
    if not include_references:
        kept = [i for i, r in enumerate(records) if not r.is_reference]
        records, step_scores = [records[i] for i in kept], [step_scores[i] for i in kept]
    return prm_report(
        step_scores,
        [r.labels for r in records],
        [r.outcome for r in records],
        [r.group_id for r in records],
        [r.answer or None for r in records],
        threshold=threshold,
        tau=tau,
        tau_grid=tau_grid,
    )


def _title(key: str) -> str:
    if key in TITLES:
        return TITLES[key]
    section, _, name = key.partition("/")
    if section == "bon":
        return f"best-of-N, {name}"
    if name.startswith("prm_weighted_"):
        return f"PRM-weighted vote, {name.removeprefix('prm_weighted_')}"
    return key


def _value(key: str, value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    if key.rsplit("/", 1)[-1].startswith("num_"):
        return str(int(value))
    if key == "first_error/tau":
        return f"{value:.3f}"
    return f"{100 * value:.1f}"


def format_table(metrics: dict[str, float]) -> Table:
    """A rich table of ``metrics`` (rates in %, counts as integers, "–" for undefined)."""
    tau_chosen = metrics.get("first_error/tau_chosen", 0.0) == 1.0
    caption = (
        "tau chosen on this data to maximise first-error F1 (optimistic; pass --tau chosen on validation data)"
        if tau_chosen
        else None
    )
    table = Table(title="PRM evaluation (rates in %)", caption=caption)
    table.add_column("section")
    table.add_column("metric")
    table.add_column("value", justify="right")
    last = None
    for key, value in metrics.items():
        if key == "first_error/tau_chosen":
            continue
        section = key.split("/", 1)[0]
        if last is not None and section != last:
            table.add_section()
        title = _title(key) + (" (chosen on data)" if key == "first_error/tau" and tau_chosen else "")
        table.add_row(section if section != last else "", title, _value(key, value))
        last = section
    return table


def _jsonable(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def evaluate(
    model: str,
    data: str,
    format: str = "spare",
    reader_options: dict[str, Any] | None = None,
    tau: float | None = None,
    output: str | None = None,
    batch_size: int = 8,
    threshold: float = 0.5,
    include_references: bool = False,
    strict: bool = False,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Evaluate an exported PRM on step-annotated records: step, first-error and best-of-N metrics.

    Args:
        model: folder written by ``spare-train export``.
        data: annotation file, folder of shards, or glob.
        format: reader name (spare, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions).
        reader_options: keyword options of the reader, e.g. ``'{"outcome_field": "em"}'``.
        tau: first-error threshold (a step scored below it is the predicted first error). Leave
            unset to choose it on this data (reported as such; optimistic).
        output: write the metrics (and the read report) to this JSON file.
        batch_size: solutions per forward pass when scoring.
        threshold: step-classification threshold for step accuracy / F1.
        include_references: count reference solutions as candidates (off: they are gold answers,
            not candidates, and would make the oracle 100 %).
        strict: stop at the first malformed record instead of skipping it.
        trust_remote_code: run code shipped with the model folder (off: a folder is data).
    """
    from spare_train.files import atomic_write_text
    from spare_train.formats import read_records
    from spare_train.prm.scoring import check_prm_folder, check_scores, load_prm

    console = Console()
    check_prm_folder(model)  # a wrong folder fails before the data is read
    records, report = read_records(format, data, strict=strict, **(reader_options or {}))
    console.print(report.summary())
    report.check_kept(data)
    scores = load_prm(model, trust_remote_code=trust_remote_code).score(records, batch_size=batch_size, progress=True)
    check_scores(scores, model)  # a broken model fails here: no metric over NaN scores is printed
    metrics = evaluate_scores(records, scores, tau=tau, threshold=threshold, include_references=include_references)
    console.print(format_table(metrics))
    result = {"model": model, "data": data, "format": format, "metrics": _jsonable(metrics),
              "read": report.to_dict(max_rejections=100)}  # fmt: skip
    if output:
        atomic_write_text(output, json.dumps(result, indent=2, ensure_ascii=False))
        console.print(f"wrote {output}")
    return result
