"""Metric functions against cases computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from spare_train.prm.evaluator import PRMEvaluator, stable_hash
from spare_train.prm.metrics import (
    _first_below_per_tau,
    best_of_n,
    best_of_n_report,
    choose_tau,
    first_error_metrics,
    predicted_first_error,
    prm_report,
    true_first_error,
    weighted_vote,
)
from spare_train.records import aggregate

# ------------------------------------------------------------------------------------- step

# index:          0    1    2    3    4     5
STEP_SCORES = [0.9, 0.2, 0.6, 0.4, 0.7, 0.8]
STEP_LABELS = [1.0, 0.0, 0.3, 1.0, -100, 0.8]  # 0.3 -> error, 0.8 -> correct, -100 dropped


def test_step_metrics_hand_computed():
    # kept: scores .9 .2 .6 .4 .8, targets 1 0 0 1 1, predictions (>= .5) 1 0 1 0 1
    m = _step(STEP_SCORES, STEP_LABELS)
    assert m["acc"] == pytest.approx(3 / 5)  # wrong at index 2 and 3
    assert m["f1"] == pytest.approx(2 / 3)  # TP 2, FP 1, FN 1 -> 4 / 6
    assert m["f1_error"] == pytest.approx(1 / 2)  # TP 1 (idx 1), FP 1 (idx 3), FN 1 (idx 2) -> 2 / 4
    assert m["auroc"] == pytest.approx(5 / 6)  # pos .9 .4 .8 vs neg .2 .6: 5 of 6 pairs ordered
    assert m["num_steps"] == 5


def test_step_metrics_threshold_and_degenerate_cases():
    assert _step(STEP_SCORES, STEP_LABELS, 0.65)["acc"] == pytest.approx(4 / 5)  # only idx 3 wrong
    one_class = _step([0.2, 0.9], [1.0, 1.0])
    assert math.isnan(one_class["auroc"]) and one_class["acc"] == pytest.approx(0.5)
    all_right = _step([0.7, 0.9], [1.0, 1.0])
    assert all_right["f1"] == 1.0 and math.isnan(all_right["f1_error"])  # no error predicted or present
    assert _step([0.2, 0.9], [1.0, 1.0])["f1_error"] == 0.0  # one false alarm: F1 0, not undefined
    empty = _step([0.3, 0.4], [-100, float("nan")])
    assert empty["num_steps"] == 0 and all(math.isnan(empty[k]) for k in ("acc", "f1", "auroc"))


def _step(scores, labels, threshold=0.5):
    from spare_train.prm.metrics import step_metrics

    return step_metrics(torch.tensor(scores), torch.tensor(labels, dtype=torch.float), threshold)


# ------------------------------------------------------------------------------ first error


def test_true_first_error():
    assert true_first_error([1, 1, 0, None]) == 2  # steps after the error may be unlabeled
    assert true_first_error([1, 0.3]) == 1  # soft label below 0.5 is an error
    assert true_first_error([1, 1]) == -1
    assert true_first_error([1, None, 0]) is None  # a gap before the error: unknown
    assert true_first_error([1, -100]) is None
    assert true_first_error([1, float("nan")]) is None


def test_predicted_first_error():
    assert predicted_first_error([0.9, 0.4, 0.2], 0.5) == 1
    assert predicted_first_error([0.9, 0.8], 0.5) == -1
    assert predicted_first_error([0.5], 0.5) == -1  # strictly below tau
    assert predicted_first_error([float("nan"), 0.3], 0.5) == 1
    assert predicted_first_error([], 0.5) == -1


def test_first_error_metrics_4_over_7():
    true = [2, 1, 3, -1, -1]
    pred = [2, 1, -1, -1, 0]  # erroneous: hit, hit, miss -> 2/3; correct: hit, miss -> 1/2
    m = first_error_metrics(pred, true)
    assert m["acc_error"] == pytest.approx(2 / 3)
    assert m["acc_correct"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(4 / 7)  # 2 * (2/3) * (1/2) / (2/3 + 1/2)
    assert (m["num_error"], m["num_correct"]) == (3, 2)


def test_first_error_metrics_zero_and_undefined():
    assert first_error_metrics([-1, -1], [0, -1])["f1"] == 0.0  # acc_error 0
    assert math.isnan(first_error_metrics([-1], [-1])["f1"])  # no erroneous solution
    with pytest.raises(ValueError):
        first_error_metrics([1], [1, 2])


# A: first error at 1; B: all correct; C: first error at 0.
TAU_SCORES = [[0.9, 0.3], [0.8, 0.6], [0.45, 0.9]]
TAU_TRUE = [1, -1, 0]


def test_choose_tau_hand_computed():
    # tau .2: nothing flagged -> acc_error 0 -> F1 0; tau .4: A hit, C missed -> F1 2*.5*1/1.5;
    # tau .5: all three right -> F1 1; tau .7: B flagged at step 1 -> acc_correct 0 -> F1 0.
    assert choose_tau(TAU_SCORES, TAU_TRUE, [0.2, 0.4, 0.5, 0.7]) == (0.5, 1.0)


def test_choose_tau_ties_take_lower_median():
    assert choose_tau(TAU_SCORES, TAU_TRUE, [0.46, 0.5, 0.55, 0.59])[0] == 0.5  # 4 ties: 2nd
    assert choose_tau(TAU_SCORES, TAU_TRUE, [0.59, 0.46, 0.55])[0] == 0.55  # sorted, middle
    tau, f1 = choose_tau([[0.9]], [-1])
    assert tau == 0.5 and math.isnan(f1)


def test_vectorised_first_error_matches_reference():
    rng = random.Random(0)
    sols = [[rng.choice([rng.random(), float("nan")]) for _ in range(rng.randrange(0, 6))] for _ in range(200)]
    grid = [0.0, 0.1, 0.33, 0.5, 0.9, 1.0]
    got = _first_below_per_tau(sols, grid)
    assert got == [[predicted_first_error(s, tau) for s in sols] for tau in grid]


# ------------------------------------------------------------------------------- best-of-N

# 3 questions x 4 candidates: (group, step scores, outcome, answer)
TOY = [
    ("q1", [0.9, 0.9, 0.2], 0, "5"),  # min .2  prod .162   last .2  mean .667
    ("q1", [0.6, 0.6, 0.6], 1, "6"),  # min .6  prod .216   last .6  mean .6
    ("q1", [0.95, 0.3, 0.95], 0, "5"),  # min .3  prod .27075 last .95 mean .733
    ("q1", [0.5], 1, "6"),  # min .5  prod .5     last .5  mean .5
    ("q2", [0.7, 0.8], 1, "12"),  # min .7  prod .56  last .8  mean .75
    ("q2", [0.9, 0.1], 0, "13"),  # min .1  prod .09  last .1  mean .5
    ("q2", [0.2, 0.9], 0, None),  # min .2  prod .18  last .9  mean .55   (no answer: no vote)
    ("q2", [0.7, 0.8], 0, "14"),  # ties with the first q2 candidate on every aggregate
    ("q3", [0.9], 0, "7"),  # all .9
    ("q3", [0.8, 0.9], 0, "7"),  # min .8  prod .72  last .9  mean .85
    ("q3", [], 0, None),  # no steps: nan, never picked
    ("q3", [0.3], 1, "8"),  # all .3
]
# Interleave questions (order inside a question kept, so "first on ties" is unchanged).
TOY = [TOY[i] for i in (0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11)]
G, S, O, A = (list(x) for x in zip(*TOY))

EXPECTED = {
    # picks per question (q1, q2, q3) -> solved
    "bon/min": 2 / 3,  # b ✓, e (tie with h, first) ✓, i ✗
    "bon/prod": 2 / 3,  # d ✓, e ✓, i ✗
    "bon/last": 0.0,  # c ✗, g ✗, i (tie with j, first) ✗
    "bon/mean": 1 / 3,  # c ✗, e ✓, i ✗
    "bon/oracle": 1.0,
    "bon/random": 1 / 3,  # (2/4 + 1/4 + 1/4) / 3
    "vote/majority": 1 / 3,  # q1 "5" 2 vs "6" 2 -> "5" first ✗; q2 three 1-vote ties -> "12" ✓; q3 "7" ✗
    "vote/prm_weighted_min": 2 / 3,  # q1 "5" .5 vs "6" 1.1 ✓; q2 "12" .7 = "14" .7 -> "12" ✓; q3 ✗
    "vote/prm_weighted_prod": 2 / 3,  # q1 .43275 vs .716 ✓; q2 .56 ties -> "12" ✓; q3 ✗
    "vote/prm_weighted_last": 1 / 3,  # q1 "5" 1.15 vs 1.1 ✗; q2 ✓; q3 ✗
    "vote/prm_weighted_mean": 1 / 3,  # q1 "5" 1.4 vs 1.1 ✗; q2 ✓; q3 ✗
    "bon/num_questions": 3,
}


def test_aggregate():
    s = [0.5, 0.4]
    assert [aggregate(s, h) for h in ("min", "prod", "last", "mean")] == pytest.approx([0.4, 0.2, 0.4, 0.45])
    assert math.isnan(aggregate([], "min"))
    assert all(math.isnan(aggregate([0.5, math.nan], h)) for h in ("min", "prod", "last", "mean"))
    with pytest.raises(ValueError):
        aggregate(s, "max")


def test_best_of_n_toy():
    for how in ("min", "prod", "last", "mean"):
        assert best_of_n(G, S, O, how) == pytest.approx(EXPECTED[f"bon/{how}"]), how
    assert math.isnan(best_of_n([], [], [], "min"))


def test_votes_toy():
    assert weighted_vote(G, A, O) == pytest.approx(1 / 3)
    # answer correctness: "6" is correct because some candidate answering "6" has outcome 1
    assert weighted_vote(["q"] * 3, ["6", "6", "5"], [0, 1, 0]) == 1.0
    assert weighted_vote(["q", "r"], ["6", None], [1, 1]) == 0.5  # r has no voter: unsolved
    assert math.isnan(weighted_vote(["q"], [None], [1]))


def test_best_of_n_report_toy():
    report = best_of_n_report(G, S, O, A)
    assert report.keys() == EXPECTED.keys()
    for key, value in EXPECTED.items():
        assert report[key] == pytest.approx(value), key


# ------------------------------------------------------------------------- report/evaluator

# Correct candidates all-correct; wrong ones wrong at their last step.
TOY_LABELS = [[1.0] * len(s) if o == 1 or not s else [1.0] * (len(s) - 1) + [0.0] for s, o in zip(S, O)]


def test_prm_report_drops_unknown_outcomes_and_flags_chosen_tau():
    extra = ([[0.99]], [[None]], [None], ["q4"], ["1"])  # unknown outcome, unlabeled
    args = [a + b for a, b in zip((S, TOY_LABELS, O, G, A), extra)]
    report = prm_report(*args)
    for key, value in EXPECTED.items():
        assert report[key] == pytest.approx(value), key
    assert report["first_error/tau_chosen"] == 1.0
    assert report["step/num_steps"] == sum(len(s) for s in S)
    fixed = prm_report(*args, tau=0.5)
    assert fixed["first_error/tau"] == 0.5 and fixed["first_error/tau_chosen"] == 0.0


def _batches():
    """TOY as two right-padded batches, labels -100 on padding."""
    out = []
    for lo, hi in ((0, 5), (5, 12)):
        rows = range(lo, hi)
        width = max(1, max(len(S[i]) for i in rows))
        scores, labels, mask = (torch.zeros(hi - lo, width) for _ in range(3))
        labels -= 100
        for r, i in enumerate(rows):
            n = len(S[i])
            scores[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(S[i]), torch.tensor(TOY_LABELS[i]), 1
        outcome = torch.tensor([float(O[i]) for i in rows])
        out.append((scores, labels, mask.bool(), outcome, [G[i] for i in rows], [A[i] or "" for i in rows]))
    return out


def test_prm_evaluator_matches_prm_report():
    ev = PRMEvaluator()
    for batch in _batches():
        ev.update(*batch)
    got = ev.compute()
    want = prm_report(S, TOY_LABELS, O, G, A)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6, nan_ok=True), key
    ev.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert ev.compute()["bon/num_questions"] == 0


def test_stable_hash_is_deterministic_and_never_zero():
    assert stable_hash("q1") == stable_hash("q1") != stable_hash("q2")
    assert stable_hash("") != 0


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    ev = PRMEvaluator()
    ev.update(*_batches()[rank])
    queue.put((rank, ev.compute()))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_prm_evaluator_gathers_across_ranks():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=100) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    want = prm_report(S, TOY_LABELS, O, G, A)
    for rank in (0, 1):
        for key in want:
            assert results[rank][key] == pytest.approx(want[key], abs=1e-6, nan_ok=True), (rank, key)


# ---------------------------------------------------------------------------- unscored steps


def test_unscored_steps_are_left_out_and_counted():
    """A step cut by max_length (score None) is not a step with a score: the toy gives AUROC 1.0,
    not the 0.5 that counting it as NaN gave."""
    scores = [[0.9, 0.1, None, None], [0.8, 0.7], [0.2, None]]
    labels = [[1.0, 0.0, 0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    report = prm_report(scores, labels, [0, 1, 0], ["q1", "q1", "q1"], ["a", "b", "a"])
    assert report["step/auroc"] == 1.0 and report["step/acc"] == 1.0
    assert report["step/num_steps"] == 5 and report["step/num_unscored"] == 3
    # solution 0's first error (step 1) is scored: kept; solution 2 errs at step 0: kept
    assert report["first_error/num_error"] == 2 and report["first_error/num_correct"] == 1


def test_first_error_unknown_within_the_scored_steps_is_left_out():
    # all scored steps correct but the error may sit in the unscored part: unknown, not "no error"
    report = prm_report([[0.9, None], [0.9, 0.8]], [[1.0, 0.0], [1.0, 1.0]], [0, 1], ["q", "q"], ["a", "b"])
    assert report["first_error/num_error"] == 0 and report["first_error/num_correct"] == 1


@pytest.mark.parametrize("how", ["min", "prod", "last", "mean"])
def test_best_of_n_can_pick_a_truncated_candidate(how):
    """Aggregates use the scored steps, so a truncated candidate competes (it never won before)."""
    scores = [[0.9, 0.95, None], [0.5, 0.4]]
    assert best_of_n(["q", "q"], scores, [1, 0], how) == 1.0
    assert best_of_n(["q", "q"], [[None, None], [0.5]], [1, 0], how) == 0.0  # nothing scored: never picked


def test_nan_scores_make_every_score_metric_nan():
    """A broken model (NaN scores) cannot pass as good: NaN is never "lowest" or "highest"."""
    scores = [[math.nan, math.nan], [math.nan]]
    report = prm_report(scores, [[1.0, 0.0], [1.0]], [0, 1], ["q", "q"], ["a", "b"])
    for key in ("step/auroc", "step/acc", "first_error/f1", "bon/min", "bon/mean", "vote/prm_weighted_min"):
        assert math.isnan(report[key]), key
    assert report["bon/oracle"] == 1.0 and report["bon/random"] == 0.5  # score-free figures stay
    assert math.isnan(best_of_n(["q", "q"], [[0.9], [math.nan]], [1, 0], "min"))
    assert math.isnan(weighted_vote(["q", "q"], ["a", "b"], [1, 0], [0.5, math.nan]))
