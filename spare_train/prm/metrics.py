"""PRM evaluation metrics as pure functions: step classification, first-error detection, best-of-N.

Three views of one process reward model, each answering a different question:

* **step** — is each step's score on the right side of ``threshold``? Accuracy, F1 and AUROC over
  all labeled steps (torchmetrics' functional API).
* **first_error** — ProcessBench-style: predict the first wrong step of a solution as the first
  step scored below ``tau`` (or "none", -1) and compare with the annotated first error.
  See https://arxiv.org/abs/2412.06559.
* **bon / vote** — reranking: pick one of a question's N candidates by its aggregated step
  scores (best-of-N) or by PRM-weighted answer voting, and count questions solved. Oracle
  (pass@N) and a random pick bound it from above and below.

Conventions shared by every function here:

* The positive class of a step is **correct** (label >= 0.5, score >= threshold). ``f1_error``
  is the F1 of the error class, which is usually the rarer and more interesting one.
* Unlabeled steps carry ``-100`` (tensors) or ``None`` (lists); NaN is also treated as unlabeled.
* **Scored steps.** A step score of ``None`` means *unscored* (the step was cut by the model's
  ``max_length``): every metric leaves it out and :func:`prm_report` counts it
  (``step/num_unscored``). A solution's aggregate uses its scored steps; a first error counts
  only when it is known within the scored steps.
* A NaN *score* is a broken model, never a low score: any metric computed over one is NaN.
* A metric with nothing to measure is ``nan`` (never a silent 0), so keys are stable across
  epochs and a missing class shows up as ``nan`` rather than as a perfect or zero score.

:class:`spare_train.prm.evaluator.PRMEvaluator` gathers scores in a LightningModule's validation
loop (across DDP ranks) and calls :func:`prm_report`, which is also what ``spare-train evaluate`` uses.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import binary_accuracy, binary_auroc, binary_f1_score

from spare_train.records import AGGREGATES, IGNORE, aggregate, group_by, is_label

#: Step-score aggregations for best-of-N and weighted voting.
HOWS: tuple[str, ...] = AGGREGATES
#: Candidate thresholds for :func:`choose_tau`: 0.01, 0.02, …, 0.99.
DEFAULT_TAU_GRID: tuple[float, ...] = tuple(i / 100 for i in range(1, 100))

nan = math.nan


# --------------------------------------------------------------------------------------- step


def step_metrics(scores: Tensor, labels: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, F1 (correct class and error class) and AUROC of step scores.

    ``scores``: ``[N]`` probability that each step is correct. ``labels``: ``[N]`` hard or soft
    labels, binarised at 0.5 (>= 0.5 is correct); entries equal to -100 or NaN are ignored.
    A step is predicted correct when ``score >= threshold``. AUROC is ``nan`` when the labeled
    steps are all of one class. Returns ``acc``, ``f1``, ``f1_error``, ``auroc``, ``num_steps``.
    """
    scores, labels = scores.detach().float().flatten(), labels.detach().float().flatten()
    keep = (labels != IGNORE) & ~labels.isnan()
    scores, target = scores[keep].cpu(), (labels[keep] >= 0.5).long().cpu()
    n = int(target.numel())
    if n == 0 or bool(scores.isnan().any()):  # nothing to measure, or a broken model
        return {"acc": nan, "f1": nan, "f1_error": nan, "auroc": nan, "num_steps": float(n)}
    pred = (scores >= threshold).long()
    one_class = bool(target.min() == target.max())
    f1, f1_error = binary_f1_score(pred, target).item(), binary_f1_score(1 - pred, 1 - target).item()
    return {
        "acc": binary_accuracy(pred, target).item(),
        # F1 of a class that is neither predicted nor present is undefined (torchmetrics says 0)
        "f1": nan if not (pred.any() or target.any()) else f1,
        "f1_error": nan if pred.all() and target.all() else f1_error,
        "auroc": nan if one_class else binary_auroc(scores, target).item(),
        "num_steps": float(n),
    }


# -------------------------------------------------------------------------------- first error


def true_first_error(labels: Sequence[float | None]) -> int | None:
    """0-based index of the first labeled step below 0.5, -1 if the solution is all correct, or
    ``None`` when unknown: some step before the first error (or, with no error, any step) is
    unlabeled. Steps after the first error may be unlabeled (first-error label policies do that).
    """
    for i, label in enumerate(labels):
        if not is_label(label):
            return None
        if label < 0.5:
            return i
    return -1


def predicted_first_error(step_scores: Sequence[float], tau: float) -> int:
    """Index of the first step with ``score < tau``, or -1 when none is (NaN never counts)."""
    for i, s in enumerate(step_scores):
        if s < tau:
            return i
    return -1


def first_error_metrics(pred_first: Sequence[int], true_first: Sequence[int]) -> dict[str, float]:
    """ProcessBench scores of predicted vs. annotated first-error indices (-1 = no error).

    ``acc_error``: share of erroneous solutions (true != -1) whose first error is found exactly.
    ``acc_correct``: share of correct solutions (true == -1) predicted as having no error.
    ``f1``: their harmonic mean, 0 when either is 0 and ``nan`` when either group is empty.
    """
    if len(pred_first) != len(true_first):
        raise ValueError(f"{len(pred_first)} predictions for {len(true_first)} solutions")
    err = [p == t for p, t in zip(pred_first, true_first) if t != -1]
    ok = [p == -1 for p, t in zip(pred_first, true_first) if t == -1]
    acc_error = sum(err) / len(err) if err else nan
    acc_correct = sum(ok) / len(ok) if ok else nan
    if math.isnan(acc_error) or math.isnan(acc_correct):
        f1 = nan
    elif acc_error == 0 or acc_correct == 0:
        f1 = 0.0
    else:
        f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)
    return {
        "f1": f1,
        "acc_error": acc_error,
        "acc_correct": acc_correct,
        "num_error": float(len(err)),
        "num_correct": float(len(ok)),
    }


def choose_tau(
    step_scores_per_solution: Sequence[Sequence[float]],
    true_first: Sequence[int],
    grid: Sequence[float] = DEFAULT_TAU_GRID,
) -> tuple[float, float]:
    """The ``tau`` in ``grid`` that maximises first-error F1, and that F1.

    Ties go to the lower median of the maximising values (the middle of a plateau, which is
    less brittle than either edge). When F1 is undefined for every ``tau`` (no erroneous or no
    correct solution) returns ``(0.5, nan)``. Choosing ``tau`` on the data it is scored on is
    optimistic: choose it on validation data and pass it to the test set.
    """
    if not grid:
        raise ValueError("empty tau grid")
    preds = _first_below_per_tau(step_scores_per_solution, grid)
    f1s = [first_error_metrics(p, true_first)["f1"] for p in preds]
    defined = [f for f in f1s if not math.isnan(f)]
    if not defined:
        return 0.5, nan
    best = max(defined)
    ties = sorted(t for t, f in zip(grid, f1s) if not math.isnan(f) and abs(f - best) <= 1e-12)
    return float(ties[(len(ties) - 1) // 2]), best


def _first_below_per_tau(
    step_scores_per_solution: Sequence[Sequence[float]], grid: Sequence[float]
) -> list[list[int]]:
    """:func:`predicted_first_error` of every solution for every ``tau`` in ``grid``, vectorised.

    The first step below ``tau`` is the first position where the running minimum drops below
    ``tau``, i.e. the number of running-minimum entries still ``>= tau`` (capped: -1 if all are).
    """
    n = len(step_scores_per_solution)
    lengths = torch.tensor([len(s) for s in step_scores_per_solution], dtype=torch.long)
    width = int(lengths.max()) if n else 0
    padded = torch.full((n, width), math.inf, dtype=torch.float64)
    for i, s in enumerate(step_scores_per_solution):
        padded[i, : len(s)] = torch.tensor(list(s), dtype=torch.float64)
    running = padded.nan_to_num(nan=math.inf).cummin(dim=1).values
    running[torch.arange(width)[None, :] >= lengths[:, None]] = -math.inf  # padding never counts
    out = []
    for tau in grid:
        count = (running >= tau).sum(dim=1)
        out.append(torch.where(count < lengths, count, -1).tolist())
    return out


# ---------------------------------------------------------------------------------- best-of-N


def _groups(group_ids: Sequence[Hashable]) -> list[list[int]]:
    """Candidate indices per question, questions in order of first appearance."""
    return list(group_by(range(len(group_ids)), lambda i: group_ids[i]).values())


def solution_score(step_scores: Sequence[float | None], how: str) -> float | None:
    """The aggregate of a solution's *scored* steps (``None`` when none is scored; NaN when a
    score is NaN)."""
    scored = [s for s in step_scores if s is not None]
    return aggregate(scored, how) if scored else None


def _argmax_first(values: Sequence[float | None]) -> int:
    """Index of the largest value; the first one on ties; ``None`` (no score) ranks below
    everything. Callers never pass NaN (:func:`best_of_n` and :func:`weighted_vote` return NaN
    for a question that has one)."""
    best_i, best = 0, -math.inf
    for i, v in enumerate(values):
        if v is not None and v > best:
            best_i, best = i, v
    return best_i


def best_of_n(
    group_ids: Sequence[Hashable],
    step_scores: Sequence[Sequence[float | None]],
    outcomes: Sequence[float],
    how: str = "min",
) -> float:
    """Share of questions whose highest-scoring candidate (by :func:`solution_score`) is correct.

    Ties go to the candidate that comes first; candidates with no scored step are picked only
    when no candidate of the question has a score. ``outcomes`` are 1/0. NaN when any score is
    NaN: a broken model cannot pick.
    """
    groups = _groups(group_ids)
    if not groups:
        return nan
    solved = 0.0
    for idx in groups:
        values = [solution_score(step_scores[i], how) for i in idx]
        if any(v is not None and math.isnan(v) for v in values):
            return nan
        solved += float(outcomes[idx[_argmax_first(values)]])
    return solved / len(groups)


def weighted_vote(
    group_ids: Sequence[Hashable],
    answers: Sequence[Hashable | None],
    outcomes: Sequence[float],
    weights: Sequence[float | None] | None = None,
) -> float:
    """Share of questions where the answer with the largest total weight is correct.

    Weights default to 1 (plain majority voting); a ``None`` weight (no scored step) counts 0;
    a NaN weight makes the result NaN. Candidates without an answer (``None`` or ``""``) do not
    vote; a question where nobody votes is unsolved. An answer is correct when any candidate of
    that question giving it has outcome 1 (answers are compared as given, so normalise them in
    the reader). Ties between answers go to the answer seen first. ``nan`` when no candidate at
    all has an answer.
    """
    if not any(a not in (None, "") for a in answers):
        return nan
    if weights is not None and any(w is not None and math.isnan(w) for w in weights):
        return nan
    groups = _groups(group_ids)
    solved = 0
    for idx in groups:
        tally: dict[Hashable, float] = {}
        correct: set[Hashable] = set()
        for i in idx:
            a = answers[i]
            if a in (None, ""):
                continue
            w = 1.0 if weights is None else float(weights[i] or 0.0)
            tally[a] = tally.get(a, 0.0) + w
            if outcomes[i] == 1:
                correct.add(a)
        if tally:
            keys = list(tally)
            solved += keys[_argmax_first([tally[k] for k in keys])] in correct
    return solved / len(groups)


def best_of_n_report(
    group_ids: Sequence[Hashable],
    step_scores: Sequence[Sequence[float | None]],
    outcomes: Sequence[float],
    answers: Sequence[Hashable | None],
    hows: Sequence[str] = HOWS,
) -> dict[str, float]:
    """Best-of-N per aggregation, oracle, random, majority and PRM-weighted votes.

    Keys: ``bon/<how>``, ``bon/oracle`` (pass@N: any candidate correct), ``bon/random``
    (expected accuracy of a uniform pick: mean outcome per question, averaged over questions),
    ``vote/majority``, ``vote/prm_weighted_<how>``, ``bon/num_questions``. Every candidate needs a
    1/0 outcome: drop the unknown ones first (:func:`prm_report` does).
    """
    groups = _groups(group_ids)
    out: dict[str, float] = {}
    for how in hows:
        out[f"bon/{how}"] = best_of_n(group_ids, step_scores, outcomes, how)
    if groups:
        out["bon/oracle"] = sum(any(outcomes[i] == 1 for i in g) for g in groups) / len(groups)
        out["bon/random"] = sum(sum(outcomes[i] for i in g) / len(g) for g in groups) / len(groups)
    else:
        out["bon/oracle"] = out["bon/random"] = nan
    out["bon/num_questions"] = float(len(groups))
    out["vote/majority"] = weighted_vote(group_ids, answers, outcomes)
    for how in hows:
        weights = [solution_score(s, how) for s in step_scores]
        out[f"vote/prm_weighted_{how}"] = weighted_vote(group_ids, answers, outcomes, weights)
    return out


# ------------------------------------------------------------------------------------ together


def _scored_prefix(scores: Sequence[float | None]) -> int:
    """How many leading steps are scored (unscored steps, cut by ``max_length``, are a suffix)."""
    return next((i for i, x in enumerate(scores) if x is None), len(scores))


def prm_report(
    step_scores: Sequence[Sequence[float | None]],
    step_labels: Sequence[Sequence[float | None]],
    outcomes: Sequence[float | None],
    group_ids: Sequence[Hashable],
    answers: Sequence[Hashable | None],
    *,
    threshold: float = 0.5,
    tau: float | None = None,
    tau_grid: Sequence[float] = DEFAULT_TAU_GRID,
    hows: Sequence[str] = HOWS,
) -> dict[str, float]:
    """Every metric of this module for a set of scored solutions, under ``step/``,
    ``first_error/``, ``bon/`` and ``vote/`` keys.

    One entry per solution in each argument; ``step_labels[i]`` aligns with ``step_scores[i]``
    (labels ``None``/NaN/-100 = unlabeled; scores ``None`` = unscored). Step metrics use labeled,
    scored steps (``step/num_unscored`` counts the unscored ones); first-error metrics use
    solutions whose first error is known within their scored steps (:func:`true_first_error`);
    best-of-N uses solutions with a known outcome (``None``/NaN dropped), each scored by its
    scored steps. With ``tau=None`` the threshold is chosen on this data by :func:`choose_tau` and
    ``first_error/tau_chosen`` is 1. Any NaN score makes every score-based metric NaN.
    """
    n = len(step_scores)
    if not (len(step_labels) == len(outcomes) == len(group_ids) == len(answers) == n):
        raise ValueError("prm_report: all arguments need one entry per solution")
    flat_s, flat_l, unscored = [], [], 0
    for i, (s, lab) in enumerate(zip(step_scores, step_labels)):
        if len(s) != len(lab):
            raise ValueError(f"solution {i}: {len(s)} scores for {len(lab)} labels")
        for x, y in zip(s, lab):
            if x is None:
                unscored += 1
            elif is_label(y):
                flat_s.append(float(x))
                flat_l.append(float(y))
    step = step_metrics(torch.tensor(flat_s), torch.tensor(flat_l), threshold)
    out = {f"step/{k}": v for k, v in step.items()}
    out["step/num_unscored"] = float(unscored)
    broken = any(x is not None and math.isnan(x) for s in step_scores for x in s)

    scores_fe, true_fe = [], []
    for s, lab in zip(step_scores, step_labels):
        k = _scored_prefix(s)
        t = true_first_error(lab[:k])
        if t is None or (t == -1 and k < len(s)):  # unknown, or the error may lie in the unscored part
            continue
        scores_fe.append([float(x) for x in s[:k]])
        true_fe.append(t)
    chosen = tau is None
    if chosen:
        tau, _ = choose_tau(scores_fe, true_fe, tau_grid) if not broken else (nan, nan)
    pred_fe = [predicted_first_error(s, tau) for s in scores_fe]
    fe = first_error_metrics(pred_fe, true_fe)
    if broken:
        fe.update(f1=nan, acc_error=nan, acc_correct=nan)
    out.update({f"first_error/{k}": v for k, v in fe.items()})
    out["first_error/tau"] = float(tau)
    out["first_error/tau_chosen"] = float(chosen)

    keep = [i for i, o in enumerate(outcomes) if o is not None and not math.isnan(o)]
    out.update(
        best_of_n_report(
            [group_ids[i] for i in keep],
            [step_scores[i] for i in keep],
            [float(outcomes[i]) for i in keep],
            [answers[i] for i in keep],
            hows,
        )
    )
    return out
