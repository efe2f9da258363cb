"""Label policies: composable transforms of a record's step labels, applied after reading.

Each policy maps a :class:`StepRecord` to a new one, or raises :class:`DataError` to drop it (the
data layer counts that as a rejection). Policies are named so recipes can list them::

    label_policy: [first_error, hard]          # Qwen2.5-Math-PRM-style training labels
    label_policy: [{name: consensus, field: mc_labels}]
    label_policy: [{name: critic, path: critiques.jsonl, mode: filter}]   # critique-in-the-loop
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from spare_train.records import IGNORE, StepRecord
from spare_train.records import first_error as first_error_of
from spare_train.report import DataError, Report

if TYPE_CHECKING:
    from torch import Tensor

Policy = Callable[[StepRecord], StepRecord]


def up_to_first_error(labels: Tensor, threshold: float = 0.5) -> Tensor:
    """Tensor twin of :func:`spare_train.records.first_error`: ``[B, S]`` labels -> ``[B, S]`` bool,
    True at each row's labeled steps up to and including its first incorrect one.

    Steps after a solution's first error are mostly consequences of it (a reference-guided judge
    labels them INCORRECT although each may be locally right); leaving them out is Qwen's
    first-error labelling. Unlabeled entries (:data:`IGNORE`/NaN) neither count nor end a row.
    """
    import torch

    labels = labels.float()
    valid = (labels != IGNORE) & ~labels.isnan()
    wrong = valid & (labels < threshold)
    errors_before = torch.cumsum(wrong.long(), dim=1) - wrong.long()
    return valid & (errors_before == 0)


def first_error_index(labels: Tensor, threshold: float = 0.5) -> Tensor:
    """``[B, S]`` labels -> ``[B]`` long: each row's :func:`~spare_train.records.first_error` (-1: none)."""
    import torch

    labels = labels.float()
    wrong = (labels != IGNORE) & ~labels.isnan() & (labels < threshold)
    return torch.where(wrong.any(1), wrong.int().argmax(1), torch.full_like(wrong[:, 0], -1, dtype=torch.long))


def _where(r: StepRecord) -> str:
    return str(r.source) if r.source else ""


def hard(threshold: float = 0.5) -> Policy:
    """Binarise labels: ``>= threshold`` becomes 1.0, below 0.0; unlabeled stays None."""

    def apply(r: StepRecord) -> StepRecord:
        labels = [None if x is None else (1.0 if x >= threshold else 0.0) for x in r.labels]
        return replace(r, labels=labels)

    return apply


def soft() -> Policy:
    """Keep labels as they are (soft values in [0, 1] train a 2-class soft cross-entropy)."""
    return lambda r: r


def cut_steps(r: StepRecord, n: int) -> StepRecord:
    """The record's first ``n`` steps, with their labels and per-step annotations."""

    def head(xs: list | None) -> list | None:
        return None if xs is None else xs[:n]

    return replace(
        r,
        steps=r.steps[:n],
        labels=r.labels[:n],
        alignment=head(r.alignment),
        explanation=head(r.explanation),
        error_types=head(r.error_types),
    )


def first_error(threshold: float = 0.5) -> Policy:
    """Drop the steps after the first incorrect one (label below ``threshold``), as Qwen2.5-Math-PRM
    was trained: what follows an error is not a clean signal either way."""

    def apply(r: StepRecord) -> StepRecord:
        k = r.first_error(threshold)
        return r if k < 0 else cut_steps(r, k + 1)

    return apply


def outcome_only() -> Policy:
    """Label only the last step, with the outcome: an outcome reward model (ORM)."""

    def apply(r: StepRecord) -> StepRecord:
        if r.outcome is None:
            raise DataError("no_outcome", "outcome_only needs an outcome label", _where(r), r.id)
        return replace(r, labels=[None] * (len(r.steps) - 1) + [float(r.outcome)])

    return apply


def consensus(field: str = "mc_labels", threshold: float = 0.5) -> Policy:
    """Keep a record only where two label sources agree on the first-error position.

    The second source is ``record.extra[field]`` (one value per step, e.g. Monte-Carlo estimates);
    this is the filter of Qwen's "Lessons of developing PRMs" paper.
    """

    def apply(r: StepRecord) -> StepRecord:
        other = r.extra.get(field)
        if not isinstance(other, list) or len(other) != len(r.steps):
            raise DataError("consensus_missing", f"needs extra[{field!r}] with one value per step", _where(r), r.id)
        b = replace(r, labels=[None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x) for x in other])
        fa, fb = r.first_error(threshold), b.first_error(threshold)
        if fa != fb:
            raise DataError("consensus_disagree", f"first error at step {fa} vs {fb} in {field!r}", _where(r), r.id)
        return r

    return apply


def critic(path: str, mode: Literal["filter", "relabel", "agree"] = "filter") -> Policy:
    """Critique-in-the-loop filtering (AutoMathCritique, arXiv 2411.16579): a critic's verdicts,
    read by record id from a ``spare-train critique`` output file, filter or relabel candidates
    before RFT or preference training.

    ``filter`` keeps a candidate only when the critic judges every step correct (else
    ``critic_rejected``); ``relabel`` makes the critic's verdicts the step labels (1.0 / 0.0, None
    where its critique did not parse that far); ``agree`` keeps a candidate only when the critic's
    first error is the annotation's (else ``critic_disagree``). A candidate missing from the file
    is dropped (``critic_missing``), so is one whose critique is malformed under ``filter`` and
    ``agree`` (``critic_malformed``) or whose step count differs (``critic_step_mismatch``).
    References (``is_reference``) pass unchanged: they are not candidates.
    """
    import json

    if mode not in ("filter", "relabel", "agree"):
        raise ValueError(f"critic mode must be filter, relabel or agree, not {mode!r}")
    with open(path, encoding="utf-8") as f:
        rows = {row["id"]: row for row in (json.loads(line) for line in f if line.strip())}
    values = {"correct": 1.0, "incorrect": 0.0, None: None}

    def apply(r: StepRecord) -> StepRecord:
        if r.is_reference:
            return r
        row = rows.get(r.id)
        if row is None:
            raise DataError("critic_missing", f"no critique for this id in {path}", _where(r), r.id)
        verdicts = [values[v] for v in row["verdicts"]]
        if len(verdicts) != len(r.steps):
            raise DataError("critic_step_mismatch", f"{len(verdicts)} verdicts for {len(r.steps)} steps", _where(r), r.id)
        if mode == "relabel":
            return replace(r, labels=verdicts)
        if row.get("malformed"):
            raise DataError("critic_malformed", f"the critique is malformed: {row['malformed']}", _where(r), r.id)
        if mode == "filter" and any(v != 1.0 for v in verdicts):
            raise DataError("critic_rejected", "the critic judges a step incorrect", _where(r), r.id)
        if mode == "agree":
            mine, theirs = r.first_error(), first_error_of(verdicts)
            if mine != theirs:
                raise DataError("critic_disagree", f"first error at step {mine} vs the critic's {theirs}", _where(r), r.id)
        return r

    return apply


POLICIES: dict[str, Callable[..., Policy]] = {
    "hard": hard,
    "soft": soft,
    "first_error": first_error,
    "outcome_only": outcome_only,
    "consensus": consensus,
    "critic": critic,
}

PolicySpec = str | dict[str, Any]


def build_policy(spec: PolicySpec) -> Policy:
    """``"first_error"`` or ``{"name": "consensus", "field": "mc_labels"}`` -> a policy."""
    if isinstance(spec, str):
        name, kwargs = spec, {}
    else:
        kwargs = dict(spec)
        name = kwargs.pop("name", None)
    if name not in POLICIES:
        raise ValueError(f"unknown label policy {name!r}; choose from {sorted(POLICIES)}")
    return POLICIES[name](**kwargs)


def apply_policies(
    records: Iterable[StepRecord], specs: PolicySpec | list[PolicySpec] | None, report: Report | None = None
) -> list[StepRecord]:
    """Apply the policies in order; records a policy drops are rejected into ``report``."""
    if specs is None:
        return list(records)
    policies = [build_policy(s) for s in ([specs] if isinstance(specs, str | dict) else specs)]
    report = report if report is not None else Report(strict=True)
    out = []
    for r in records:
        try:
            for p in policies:
                r = p(r)
        except DataError as err:
            report.reject(err, stage="labels")
            continue
        out.append(r)
    return out
