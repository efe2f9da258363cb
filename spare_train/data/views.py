"""Which record groups a policy objective trains on: pairs, Step-DPO pairs, unpaired, filtered, all.

A view maps the records of a split to groups of records of one question: ``[record]`` (SFT,
RFT, KTO, step-weighted SFT) or ``[chosen, rejected]`` (DPO, IPO, ORPO, Step-DPO, step-weighted
DPO), plus per-group extras (``shared_steps``, ``desirable``) and a one-line summary. The rules
themselves are the pure functions of :mod:`spare_train.pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from spare_train.pairs import build_pairs, kto_view, rft_view, step_dpo_pair
from spare_train.records import StepRecord

View = Literal["pairs", "step_pairs", "unpaired", "filtered", "all"]
VIEWS: tuple[str, ...] = ("pairs", "step_pairs", "unpaired", "filtered", "all")


@dataclass
class PairingConfig:
    """How preference pairs are built (see :func:`spare_train.pairs.build_pairs`).

    Args:
        keys: score keys, e.g. ``["outcome", "mean_label"]`` (SPARE) or ``["outcome"]``.
        comparator: ``strict_pareto`` (SPARE-ORPO), ``pareto`` or ``greater_than``.
        index: the coordinate ``greater_than`` compares.
        max_pairs_per_question: cap per question (the paper: 10), applied after every filter;
            None keeps all.
        reference_as_chosen: also pair the reference solution (read with ``add_reference``)
            against each candidate it beats.
        seed: seeds the draw when a question has more pairs than the cap.
    """

    keys: list[str] | None = None
    comparator: Literal["strict_pareto", "pareto", "greater_than"] = "strict_pareto"
    index: int = 0
    max_pairs_per_question: int | None = 10
    reference_as_chosen: bool = False
    seed: int = 0


@dataclass
class FilterConfig:
    """Which candidates the ``filtered`` (RFT) and ``unpaired``/``all`` views keep.

    Args:
        threshold: None keeps candidates with all steps correct; else the ``aggregate`` of the
            step labels must reach it.
        aggregate: ``mean``, ``min``, ``prod`` or ``last``.
        require_outcome: also require a correct final answer.
        include_reference: add the reference solutions (SFT on references).
    """

    threshold: float | None = None
    aggregate: Literal["mean", "min", "prod", "last"] = "mean"
    require_outcome: bool = True
    include_reference: bool = False


def build_view(
    records: Sequence[StepRecord], view: str, pairing: PairingConfig, filtering: FilterConfig
) -> tuple[list[list[StepRecord]], dict[str, Any]]:
    """Record groups for ``view`` and their extras (``shared_steps``, ``desirable``, ``summary``)."""
    if view in ("pairs", "step_pairs"):
        pairs, report = build_pairs(
            records,
            keys=tuple(pairing.keys or ("outcome", "mean_label")),
            comparator=pairing.comparator,
            index=pairing.index,
            max_pairs_per_question=pairing.max_pairs_per_question,
            reference_as_chosen=pairing.reference_as_chosen,
            seed=pairing.seed,
            keep=step_dpo_pair if view == "step_pairs" else None,
        )
        summary = report.summary() + ("; Step-DPO pairs: a correct next step after a shared correct prefix"
                                      if view == "step_pairs" else "")  # fmt: skip
        return [[p.chosen, p.rejected] for p in pairs], {
            "shared_steps": [p.shared_steps for p in pairs],
            "summary": summary,
        }
    if view == "unpaired":
        items = kto_view(records, include_reference=filtering.include_reference)
        good = sum(d for _, d in items)
        return [[r] for r, _ in items], {
            "desirable": [d for _, d in items],
            "summary": f"{good} desirable, {len(items) - good} undesirable",
        }
    if view == "filtered":
        kept = rft_view(
            records,
            threshold=filtering.threshold,
            how=filtering.aggregate,
            require_outcome=filtering.require_outcome,
            include_reference=filtering.include_reference,
        )
        return [[r] for r in kept], {"summary": f"{len(kept)} of {len(records)} candidates kept"}
    if view == "all":
        kept = [r for r in records if filtering.include_reference or not r.is_reference]
        return [[r] for r in kept], {"summary": f"{len(kept)} candidates"}
    raise ValueError(f"unknown view {view!r}; choose from {VIEWS}")
