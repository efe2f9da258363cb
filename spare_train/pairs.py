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

from spare_train.records import AGGREGATES, StepRecord, aggregate, first_error, group_by, is_label

Score = tuple[float, ...]


# --------------------------------------------------------------------------------------- scores
def _outcome(r: StepRecord) -> float:
    return math.nan if r.outcome is None else float(r.outcome)


def _min_label(r: StepRecord) -> float:
    return aggregate(r.known_labels(), "min")


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
    """One preference pair of the same question.

    ``shared_steps`` > 0 marks a Step-DPO pair whose first ``shared_steps`` steps are identical in
    both answers (the preference is on what follows)."""

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
    filtered_out: int = 0

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
            + (f"; {self.filtered_out} admissible pairs filtered out before the cap" if self.filtered_out else "")
        )


def response_key(record: StepRecord) -> tuple[str, ...]:
    """What makes two responses the same text (pairs of identical texts are never built)."""
    return (record.preamble, *record.steps)


def candidate_pairs(
    records: Sequence[StepRecord],
    *,
    keys: Sequence[str] = ("outcome", "mean_label"),
    comparator: str = "strict_pareto",
    index: int = 0,
    reference_as_chosen: bool = False,
) -> dict[str, list[Pair]]:
    """Every admissible (chosen, rejected) pair, per question, uncapped.

    A question's pool holds every ordered pair of its candidates (``is_reference`` records
    excluded) where ``comparator(score(chosen), score(rejected))`` holds and the two response
    texts differ. With ``reference_as_chosen`` it also holds (reference, candidate) for every
    candidate the reference beats under the same comparator (the reference scores 1 on every
    key). Each pool is sorted: reference pairs first, then by (chosen id, rejected id).
    """
    if comparator not in COMPARATORS:
        raise ValueError(f"unknown comparator {comparator!r}; choose from {sorted(COMPARATORS)}")
    beats = COMPARATORS[comparator]
    pools: dict[str, list[Pair]] = {}
    for gid, group in group_by(records, lambda r: r.group_id).items():
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
        pools[str(gid)] = pool
    return pools


def cap_pairs(pool: Sequence[Pair], k: int | None, seed: int, group_id: str) -> list[Pair]:
    """At most ``k`` pairs of one question's ``pool``, drawn without replacement with a generator
    seeded by ``(seed, group_id)`` (so a question's pairs do not depend on the other questions or
    on record order), in pool order."""
    if k is None or len(pool) <= k:
        return list(pool)
    rng = random.Random(f"{seed}:{group_id}")
    return [pool[i] for i in sorted(rng.sample(range(len(pool)), k))]


def build_pairs(
    records: Sequence[StepRecord],
    *,
    keys: Sequence[str] = ("outcome", "mean_label"),
    comparator: str = "strict_pareto",
    index: int = 0,
    max_pairs_per_question: int | None = 10,
    reference_as_chosen: bool = False,
    seed: int = 0,
    keep: Callable[[Pair], Pair | None] | None = None,
) -> tuple[list[Pair], PairReport]:
    """Up to ``max_pairs_per_question`` unique (chosen, rejected) pairs per question.

    Build every admissible pair (:func:`candidate_pairs`), filter each with ``keep`` (a function
    returning the pair, a changed pair, or ``None`` to drop it: e.g. :func:`step_dpo_pair`), and
    only then cap each question at ``max_pairs_per_question`` with :func:`cap_pairs`, so a filter
    never loses pairs to the cap. With ``reference_as_chosen`` the reference is paired with every
    candidate it beats (see docs/offline_rl.md for how this differs from the SPARE code).
    """
    report = PairReport()
    out: list[Pair] = []
    pools = candidate_pairs(
        records, keys=keys, comparator=comparator, index=index, reference_as_chosen=reference_as_chosen
    )
    cands = {str(g): sum(not r.is_reference for r in rs) for g, rs in group_by(records, lambda r: r.group_id).items()}
    for gid, pool in pools.items():
        if keep is not None:
            kept = [keep(p) for p in pool]
            report.filtered_out += sum(p is None for p in kept)
            pool = [p for p in kept if p is not None]
        pool = cap_pairs(pool, max_pairs_per_question, seed, gid)
        out.extend(pool)
        report.pairs_per_question[gid] = len(pool)
        report.candidates_per_question[gid] = cands[gid]
        report.reference_pairs += sum(p.chosen.is_reference for p in pool)
    return out, report


# --------------------------------------------------------------------------------------- views
def all_steps_correct(record: StepRecord, threshold: float = 0.5) -> bool:
    """Every step labeled, and each label >= ``threshold``."""
    return all(is_label(x) and x >= threshold for x in record.labels)


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


def rft_view(
    records: Sequence[StepRecord],
    *,
    threshold: float | None = None,
    how: str = "mean",
    require_outcome: bool = True,
    include_reference: bool = False,
) -> list[StepRecord]:
    """Candidates for rejection-sampling fine-tuning (RFT).

    ``threshold=None``: keep candidates whose steps are all labeled correct. Otherwise keep those
    whose aggregate ``how`` (``mean``/``min``/``prod``/``last``) of the known step labels is ``>= threshold``.
    ``require_outcome`` additionally requires a correct final answer (an unknown one fails).
    """
    if how not in AGGREGATES:
        raise ValueError(f"unknown aggregate {how!r}; choose from {AGGREGATES}")
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
            ok = aggregate(r.known_labels(), how) >= threshold  # NaN (nothing known) fails
        if ok:
            kept.append(r)
    return kept


# ----------------------------------------------------------------------------------- Step-DPO
def step_dpo_prefix(
    chosen: StepRecord,
    rejected: StepRecord,
    threshold: float = 0.5,
) -> int | None:
    """Number of leading steps a Step-DPO pair shares, or None when the pair cannot be one.

    Step-DPO (https://arxiv.org/abs/2406.18629) conditions on the correct steps before the
    rejected answer's first wrong step ``e`` and prefers a *correct* step ``e`` to the wrong one.
    That needs: the rejected answer has a first error ``e`` (a label < ``threshold``; unlabeled
    steps are skipped); the chosen answer is correct (outcome 1, or the reference); it has the
    *same* first ``e`` steps (text equal); and its own step ``e`` differs from the rejected one and
    is labelled correct (>= ``threshold``; the reference's steps are correct by definition).
    """
    e = first_error(rejected.labels, threshold)
    if e < 0 or len(chosen.steps) <= e:
        return None
    if not (chosen.is_reference or chosen.outcome == 1):
        return None
    if list(chosen.steps[:e]) != list(rejected.steps[:e]) or chosen.steps[e] == rejected.steps[e]:
        return None
    label = chosen.labels[e]
    if not chosen.is_reference and not (is_label(label) and label >= threshold):
        return None
    return e


def step_dpo_pair(pair: Pair, threshold: float = 0.5) -> Pair | None:
    """``pair`` as a Step-DPO pair (``shared_steps`` set, the chosen answer given the rejected
    one's preamble so the shared prefix is identical), or None when it cannot be one
    (:func:`step_dpo_prefix`). Pass as ``build_pairs(keep=step_dpo_pair)``."""
    e = step_dpo_prefix(pair.chosen, pair.rejected, threshold)
    if e is None:
        return None
    return Pair(pair.group_id, replace(pair.chosen, preamble=pair.rejected.preamble), pair.rejected, shared_steps=e)
