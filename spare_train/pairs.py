"""Preference pairs and other training views built from step-annotated candidates.

Pure functions on :class:`~spare_train.records.StepRecord`: nothing here imports torch.

**Scores.** Each candidate gets a tuple of scores, one per key in ``keys``; the default
``("outcome", "mean_label")`` is the SPARE paper's (final-answer correctness, then how many steps
the judge accepted). The paper maps step labels to ±1 and averages; we average the labels in
{0, 1} (soft labels stay soft), which is an affine map of the paper's score and ranks identically.
A missing value (unknown outcome, no labeled step) is NaN and that coordinate is skipped when two
candidates are compared.

**Comparators** (``a`` beats ``b``):

- ``greater_than``: ``a[index] > b[index]`` on one coordinate (Outcome-ORPO: ``keys=("outcome",)``);
- ``pareto``: ``>=`` on every comparable coordinate and ``>`` on at least one;
- ``strict_pareto``: ``>`` on every comparable coordinate (the paper's SPARE-ORPO).

Two candidates with no comparable coordinate are never paired.

SPARE paper (pairs, Outcome-/SPARE-ORPO): https://arxiv.org/abs/2506.15498
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from spare_train.records import StepRecord

Score = tuple[float, ...]


# --------------------------------------------------------------------------------------- scores
def _outcome(r: StepRecord) -> float:
    return math.nan if r.outcome is None else float(r.outcome)


def _known_labels(r: StepRecord) -> list[float]:
    return [x for x in r.labels if x is not None and not math.isnan(x)]


def _min_label(r: StepRecord) -> float:
    known = _known_labels(r)
    return min(known) if known else math.nan


#: score key -> function of a record; every score lies in [0, 1], higher is better
SCORES: dict[str, Callable[[StepRecord], float]] = {
    "outcome": _outcome,
    "mean_label": StepRecord.mean_label,
    "min_label": _min_label,
}


def score(record: StepRecord, keys: Sequence[str] = ("outcome", "mean_label")) -> Score:
    """The record's score tuple. A reference solution scores 1.0 on every key (it is correct by
    definition, whatever labels it carries)."""
    unknown = [k for k in keys if k not in SCORES]
    if unknown:
        raise ValueError(f"unknown score keys {unknown}; choose from {sorted(SCORES)}")
    if record.is_reference:
        return tuple(1.0 for _ in keys)
    return tuple(float(SCORES[k](record)) for k in keys)


# ---------------------------------------------------------------------------------- comparators
def _comparable(a: Score, b: Score) -> list[tuple[float, float]]:
    return [(x, y) for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]


def greater_than(a: Score, b: Score, index: int = 0) -> bool:
    """``a[index] > b[index]``; False when either is NaN."""
    x, y = a[index], b[index]
    return not (math.isnan(x) or math.isnan(y)) and x > y


def pareto(a: Score, b: Score, index: int = 0) -> bool:
    """``a >= b`` on every comparable coordinate and ``>`` on at least one."""
    pairs = _comparable(a, b)
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def strict_pareto(a: Score, b: Score, index: int = 0) -> bool:
    """``a > b`` on every comparable coordinate (at least one must be comparable)."""
    pairs = _comparable(a, b)
    return bool(pairs) and all(x > y for x, y in pairs)


COMPARATORS: dict[str, Callable[[Score, Score, int], bool]] = {
    "greater_than": greater_than,
    "pareto": pareto,
    "strict_pareto": strict_pareto,
}


# ------------------------------------------------------------------------------------- pairing
@dataclass(frozen=True)
class Pair:
    """One preference pair of the same question. ``shared_steps`` > 0 marks a Step-DPO pair whose
    first ``shared_steps`` steps are identical in both answers (the preference is on what follows)."""

    group_id: str
    chosen: StepRecord
    rejected: StepRecord
    shared_steps: int = 0


@dataclass
class PairReport:
    """What pairing produced: pairs per question and the questions left without any pair."""

    pairs_per_question: dict[str, int] = field(default_factory=dict)
    candidates_per_question: dict[str, int] = field(default_factory=dict)
    reference_pairs: int = 0

    @property
    def num_pairs(self) -> int:
        return sum(self.pairs_per_question.values())

    @property
    def questions_without_pairs(self) -> list[str]:
        return [g for g, n in self.pairs_per_question.items() if n == 0]

    def summary(self) -> str:
        q = len(self.pairs_per_question)
        return (
            f"{self.num_pairs} pairs from {q} questions "
            f"({self.num_pairs / max(q, 1):.2f} per question, {self.reference_pairs} with the reference "
            f"as chosen); {len(self.questions_without_pairs)} questions without any pair"
        )


def group_records(records: Sequence[StepRecord]) -> dict[str, list[StepRecord]]:
    """Records by ``group_id``, groups in order of first appearance."""
    groups: dict[str, list[StepRecord]] = {}
    for r in records:
        groups.setdefault(r.group_id, []).append(r)
    return groups


def response_key(record: StepRecord) -> tuple[str, ...]:
    """What makes two responses the same text (pairs of identical texts are never built)."""
    return (record.preamble, *record.steps)


def build_pairs(
    records: Sequence[StepRecord],
    *,
    keys: Sequence[str] = ("outcome", "mean_label"),
    comparator: str = "strict_pareto",
    index: int = 0,
    max_pairs_per_question: int | None = 10,
    reference_as_chosen: bool = False,
    seed: int = 0,
) -> tuple[list[Pair], PairReport]:
    """Up to ``max_pairs_per_question`` unique (chosen, rejected) pairs per question.

    The pool of a question holds every ordered pair of its candidates (``is_reference`` records
    excluded) where ``comparator(score(chosen), score(rejected))`` holds and the two response texts
    differ; with ``reference_as_chosen`` it also holds (reference, candidate) for every candidate
    the reference beats under the same comparator (the reference scores 1 on every key), as the
    SPARE paper does. When the pool is larger than the cap, pairs are drawn without replacement
    with a generator seeded by ``(seed, group_id)``, so a question's pairs do not depend on the
    other questions or on record order. Output is sorted: reference pairs first, then by
    (chosen id, rejected id).
    """
    if comparator not in COMPARATORS:
        raise ValueError(f"unknown comparator {comparator!r}; choose from {sorted(COMPARATORS)}")
    beats = COMPARATORS[comparator]
    report = PairReport()
    out: list[Pair] = []
    for gid, group in group_records(records).items():
        cands = [r for r in group if not r.is_reference]
        refs = [r for r in group if r.is_reference] if reference_as_chosen else []
        scores = {id(r): score(r, keys) for r in group}
        pool: list[Pair] = []
        seen: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
        for chosen in refs + cands:
            for rejected in cands:
                key = (response_key(chosen), response_key(rejected))
                if chosen is rejected or key[0] == key[1] or key in seen:
                    continue
                if beats(scores[id(chosen)], scores[id(rejected)], index):
                    seen.add(key)
                    pool.append(Pair(gid, chosen, rejected))
        pool.sort(key=lambda p: (not p.chosen.is_reference, p.chosen.id, p.rejected.id))
        if max_pairs_per_question is not None and len(pool) > max_pairs_per_question:
            rng = random.Random(f"{seed}:{gid}")
            keep = sorted(rng.sample(range(len(pool)), max_pairs_per_question))
            pool = [pool[i] for i in keep]
        out.extend(pool)
        report.pairs_per_question[gid] = len(pool)
        report.candidates_per_question[gid] = len(cands)
        report.reference_pairs += sum(p.chosen.is_reference for p in pool)
    return out, report


# --------------------------------------------------------------------------------------- views
def all_steps_correct(record: StepRecord, threshold: float = 0.5) -> bool:
    """Every step labeled, and each label >= ``threshold``."""
    return all(x is not None and not math.isnan(x) and x >= threshold for x in record.labels)


def is_good(record: StepRecord) -> bool:
    """Outcome correct and every step correct (the reference always is)."""
    return record.is_reference or (record.outcome == 1 and all_steps_correct(record))


def kto_view(
    records: Sequence[StepRecord],
    *,
    desirable: Callable[[StepRecord], bool] = is_good,
    include_reference: bool = False,
) -> list[tuple[StepRecord, bool]]:
    """Unpaired examples for KTO: ``(record, desirable)``; by default desirable means outcome
    correct and all steps correct, anything else is undesirable."""
    return [(r, bool(desirable(r))) for r in records if include_reference or not r.is_reference]


_AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda xs: sum(xs) / len(xs),
    "min": min,
    "prod": math.prod,
}


def rft_view(
    records: Sequence[StepRecord],
    *,
    threshold: float | None = None,
    aggregate: str = "mean",
    require_outcome: bool = True,
    include_reference: bool = False,
) -> list[StepRecord]:
    """Candidates for rejection-sampling fine-tuning (RFT).

    ``threshold=None``: keep candidates whose steps are all labeled correct. Otherwise keep those
    whose ``aggregate`` (``mean``/``min``/``prod``) of the known step labels is ``>= threshold``.
    ``require_outcome`` additionally requires a correct final answer (an unknown one fails).
    """
    if aggregate not in _AGGREGATES:
        raise ValueError(f"unknown aggregate {aggregate!r}; choose from {sorted(_AGGREGATES)}")
    kept = []
    for r in records:
        if r.is_reference:
            if include_reference:
                kept.append(r)
            continue
        if require_outcome and r.outcome != 1:
            continue
        if threshold is None:
            ok = all_steps_correct(r)
        else:
            known = _known_labels(r)
            ok = bool(known) and _AGGREGATES[aggregate](known) >= threshold
        if ok:
            kept.append(r)
    return kept


# ----------------------------------------------------------------------------------- Step-DPO
def step_dpo_prefix(
    chosen_steps: Sequence[str],
    rejected_steps: Sequence[str],
    rejected_labels: Sequence[float | None],
    threshold: float = 0.5,
) -> int | None:
    """Number of leading steps a Step-DPO pair shares, or None when the pair cannot be one.

    Step-DPO (https://arxiv.org/abs/2406.18629) conditions on the correct steps before the
    rejected answer's first wrong step ``e`` and prefers the chosen continuation to the wrong step.
    That needs: the rejected answer has a first error ``e`` (a label < ``threshold``; unlabeled
    steps are skipped), the chosen answer has the *same* first ``e`` steps (text equal), and the
    chosen answer continues past them with a different step ``e``.
    """
    e = next(
        (i for i, x in enumerate(rejected_labels) if x is not None and not math.isnan(x) and x < threshold),
        -1,
    )
    if e < 0 or len(chosen_steps) <= e:
        return None
    if list(chosen_steps[:e]) != list(rejected_steps[:e]) or chosen_steps[e] == rejected_steps[e]:
        return None
    return e


def step_dpo_pairs(pairs: Sequence[Pair], threshold: float = 0.5) -> tuple[list[Pair], int]:
    """Keep the pairs that are valid Step-DPO pairs, with ``shared_steps`` set; also return how
    many were dropped (chosen and rejected diverge before the rejected answer's first error)."""
    out = []
    for p in pairs:
        e = step_dpo_prefix(p.chosen.steps, p.rejected.steps, p.rejected.labels, threshold)
        if e is not None:
            # the shared prefix is the rejected answer's: give the chosen one the same preamble
            chosen = replace(p.chosen, preamble=p.rejected.preamble)
            out.append(Pair(p.group_id, chosen, p.rejected, shared_steps=e))
    return out, len(pairs) - len(out)
