"""Label policies: composable transforms of a record's step labels, applied after reading.

Each policy maps a :class:`StepRecord` to a new one, or raises :class:`DataError` to drop it (the
data layer counts that as a rejection). Policies are named so recipes can list them::

    label_policy: [first_error, hard]          # Qwen2.5-Math-PRM-style training labels
    label_policy: [{name: consensus, field: mc_labels}]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from spare_train.records import IGNORE, StepRecord
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


def _cut(r: StepRecord, n: int) -> StepRecord:
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
        return r if k < 0 else _cut(r, k + 1)

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


POLICIES: dict[str, Callable[..., Policy]] = {
    "hard": hard,
    "soft": soft,
    "first_error": first_error,
    "outcome_only": outcome_only,
    "consensus": consensus,
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
