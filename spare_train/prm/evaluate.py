"""``spare-train evaluate``: score annotated records with an exported PRM or critic and report its metrics.

    spare-train evaluate --model runs/prm/export --data data/test.jsonl --tau 0.42 --output m.json
    spare-train evaluate --model runs/prm/export --critic runs/critic/export --data data/test.jsonl

A critic (an export with ``spare_critic.json``, recognised by its files) scores each step with
P("correct") read at its verdict token (:mod:`spare_train.critique.generate`), so the same metrics
apply; ``--critic`` puts one in a second column next to ``--model``, in one table.

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
from spare_train.report import DataError

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
    "critique/parse_rate": "critiques that parse",
    "critique/num_malformed": "malformed critiques",
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


def format_table(metrics: dict[str, float] | dict[str, dict[str, float]]) -> Table:
    """A rich table of ``metrics`` (rates in %, counts as integers, "–" for undefined), or of
    several models' metrics side by side (``{column name: metrics}``)."""
    columns = metrics if all(isinstance(v, dict) for v in metrics.values()) else {"value": metrics}
    tau_chosen = any(m.get("first_error/tau_chosen", 0.0) == 1.0 for m in columns.values())
    caption = (
        "tau chosen on this data to maximise first-error F1 (optimistic; pass --tau chosen on validation data)"
        if tau_chosen
        else None
    )
    table = Table(title="Evaluation (rates in %)", caption=caption)
    table.add_column("section")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys = list(dict.fromkeys(k for m in columns.values() for k in m))
    last = None
    for key in keys:
        if key == "first_error/tau_chosen":
            continue
        section = key.split("/", 1)[0]
        if last is not None and section != last:
            table.add_section()
        title = _title(key) + (" (chosen on data)" if key == "first_error/tau" and tau_chosen else "")
        values = [_value(key, m[key]) if key in m else "" for m in columns.values()]
        table.add_row(section if section != last else "", title, *values)
        last = section
    return table


def _jsonable(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def step_scores_of(
    path: str, records: list[StepRecord], batch_size: int = 8, trust_remote_code: bool = False
) -> tuple[str, list, dict[str, float]]:
    """``(kind, step scores, extra metrics)`` of ``records`` under an export: a PRM's P(correct)
    per step, or a critic's P("correct") at each verdict (None where its critique did not parse;
    extra: parse rate and malformed count). Raises when a score is NaN or infinite
    (:func:`~spare_train.prm.scoring.check_scores`): a broken model prints no metric."""
    from spare_train.critique.generate import is_critic, load_critic, summarize
    from spare_train.prm.scoring import check_scores, load_prm

    if is_critic(path):
        results = load_critic(path).critique(records, batch_size=batch_size, progress=True)
        s = summarize(results)
        extra = {"critique/parse_rate": s["parse_rate"], "critique/num_malformed": float(s["critiques"] - s["parsed"])}
        scores = [r.p_correct for r in results]
        check_scores(scores, path)
        return "critic", scores, extra
    scores = load_prm(path, trust_remote_code=trust_remote_code).score(records, batch_size=batch_size, progress=True)
    check_scores(scores, path)
    return "PRM", scores, {}


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
    critic: str | None = None,
) -> dict[str, Any]:
    """Evaluate an exported PRM or critic on step-annotated records.

    Step, first-error and best-of-N metrics; a critic's step score is P("correct") at its verdict
    token, so a PRM and a critic compare in one table (``--critic``).

    Args:
        model: folder written by ``spare-train export`` (a PRM or a critic, recognised by its files).
        data: annotation file, folder of shards, or glob.
        format: reader name (spare, critique, stepwise, math_shepherd, prm800k, processbench, gsm8k_solutions).
        reader_options: keyword options of the reader, e.g. ``'{"outcome_field": "em"}'``.
        tau: first-error threshold (a step scored below it is the predicted first error). Leave
            unset to choose it on this data (reported as such; optimistic).
        output: write the metrics (and the read report) to this JSON file.
        batch_size: solutions per forward pass (or per generate call, for a critic) when scoring.
        threshold: step-classification threshold for step accuracy / F1.
        include_references: count reference solutions as candidates (off: they are gold answers,
            not candidates, and would make the oracle 100 %).
        strict: stop at the first malformed record instead of skipping it.
        trust_remote_code: run code shipped with the model folder (off: a folder is data).
        critic: a critic folder evaluated on the same records and shown next to ``model``.
    """
    from spare_train.critique.generate import is_critic
    from spare_train.files import atomic_write_text
    from spare_train.formats import read_records
    from spare_train.prm.scoring import check_prm_folder

    console = Console()
    for path in [model] + ([critic] if critic else []):  # a wrong folder fails before the data is read
        if not is_critic(path):
            check_prm_folder(path)
    if critic and not is_critic(critic):
        raise DataError("not_a_critic", "--critic takes a critic export (no spare_critic.json in it)", critic)
    records, report = read_records(format, data, strict=strict, **(reader_options or {}))
    console.print(report.summary())
    report.check_kept(data)
    columns: dict[str, dict[str, float]] = {}
    for path in [model] + ([critic] if critic else []):
        kind, scores, extra = step_scores_of(path, records, batch_size, trust_remote_code)
        name = kind if kind not in columns else f"{kind} ({path})"
        metrics = evaluate_scores(records, scores, tau=tau, threshold=threshold, include_references=include_references)
        columns[name] = {**metrics, **extra}
    console.print(format_table(columns))
    first = next(iter(columns.values()))
    result = {"model": model, "data": data, "format": format, "metrics": _jsonable(first),
              "read": report.to_dict(max_rejections=100)}  # fmt: skip
    if critic:
        result["critic"] = critic
        result["columns"] = {k: _jsonable(v) for k, v in columns.items()}
    if output:
        atomic_write_text(output, json.dumps(result, indent=2, ensure_ascii=False))
        console.print(f"wrote {output}")
    return result
