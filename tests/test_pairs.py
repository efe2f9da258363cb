"""Pair-building rules, one test per rule, on hand-made records."""

from __future__ import annotations

import math

import pytest

from spare_train.pairs import (
    build_pairs,
    greater_than,
    kto_view,
    pareto,
    rft_view,
    score,
    step_dpo_pair,
    step_dpo_prefix,
    strict_pareto,
)
from spare_train.records import Prompt, StepRecord

NAN = math.nan


def rec(cid: str, labels: list, outcome: int | None, gid: str = "q", steps: list[str] | None = None, **kw) -> StepRecord:
    steps = steps or [f"{cid} step {i}" for i in range(len(labels))]
    return StepRecord(id=f"{gid}#{cid}", group_id=gid, prompt=Prompt("What is 1+1?"), steps=steps, labels=labels, outcome=outcome, **kw)


def ids(pairs) -> list[tuple[str, str]]:
    return [(p.chosen.id.split("#")[1], p.rejected.id.split("#")[1]) for p in pairs]


def test_score_default_is_outcome_then_mean_label_and_reference_is_best():
    assert score(rec("a", [1, 0, 1, None], 0)) == (0.0, pytest.approx(2 / 3))
    s = score(rec("b", [None], None))
    assert all(math.isnan(x) for x in s)
    assert score(rec("r", [0.0], 0, is_reference=True)) == (1.0, 1.0)
    with pytest.raises(ValueError, match="unknown score keys"):
        score(rec("a", [1], 1), keys=("nope",))


def test_greater_than_compares_one_coordinate():
    assert greater_than((1.0, 0.0), (0.0, 1.0))
    assert not greater_than((1.0, 0.0), (1.0, 0.5))
    assert greater_than((1.0, 0.9), (1.0, 0.5), index=1)


def test_pareto_needs_ge_everywhere_and_gt_somewhere():
    assert pareto((1.0, 0.5), (0.0, 0.5))
    assert not pareto((1.0, 0.5), (1.0, 0.5))  # equal: no strict improvement
    assert not pareto((1.0, 0.4), (0.0, 0.5))  # worse on one coordinate


def test_strict_pareto_needs_gt_everywhere():
    assert strict_pareto((1.0, 0.6), (0.0, 0.5))
    assert not strict_pareto((1.0, 0.5), (0.0, 0.5))  # pareto but not strict


def test_nan_coordinate_is_skipped():
    assert strict_pareto((1.0, NAN), (0.0, 0.9))  # only outcome comparable
    assert pareto((NAN, 0.9), (0.0, 0.5))
    assert not greater_than((NAN, 1.0), (0.0, 0.0))
    assert not strict_pareto((NAN, NAN), (0.0, 0.0))  # nothing comparable: never paired
    assert not pareto((NAN, 1.0), (0.0, NAN))


@pytest.mark.parametrize(
    "comparator, expected",
    [
        # good (1, 1.0), ok (1, 0.5), bad (0, 0.5), worst (0, 0.0)
        ("strict_pareto", {("good", "bad"), ("good", "worst"), ("ok", "worst")}),
        ("pareto", {("good", "ok"), ("good", "bad"), ("good", "worst"), ("ok", "bad"), ("ok", "worst"), ("bad", "worst")}),
        ("greater_than", {("good", "bad"), ("good", "worst"), ("ok", "bad"), ("ok", "worst")}),
    ],
)
def test_build_pairs_per_comparator(comparator, expected):
    records = [rec("good", [1, 1], 1), rec("ok", [1, 0], 1), rec("bad", [1, 0], 0), rec("worst", [0, 0], 0)]
    pairs, report = build_pairs(records, comparator=comparator, max_pairs_per_question=None)
    assert set(ids(pairs)) == expected
    assert report.pairs_per_question == {"q": len(expected)}


def test_identical_texts_are_never_paired_and_pairs_are_unique():
    same = ["x = 1", "The answer is 1."]
    records = [rec("a", [1, 1], 1, steps=same), rec("b", [0, 0], 0, steps=same), rec("c", [0, 0], 0, steps=same)]
    pairs, report = build_pairs(records)
    assert pairs == [] and report.questions_without_pairs == ["q"]
    records = [rec("a", [1, 1], 1), rec("b", [0, 0], 0, steps=["s", "t"]), rec("c", [0, 0], 0, steps=["s", "t"])]
    pairs, _ = build_pairs(records)
    assert ids(pairs) == [("a", "b")]  # (a, c) has the same texts as (a, b)


def _many(gid: str = "q") -> list[StepRecord]:
    good = [rec(f"g{i}", [1, 1], 1, gid) for i in range(4)]
    bad = [rec(f"b{i}", [0, 0], 0, gid) for i in range(4)]
    return good + bad  # 16 strict-pareto pairs


def test_cap_k_pairs_per_question():
    pairs, report = build_pairs(_many("q1") + _many("q2"), max_pairs_per_question=3)
    assert report.pairs_per_question == {"q1": 3, "q2": 3}
    assert len({(p.chosen.id, p.rejected.id) for p in pairs}) == 6
    pairs, _ = build_pairs(_many(), max_pairs_per_question=None)
    assert len(pairs) == 16


def test_seeding_same_seed_same_pairs_other_seed_other_pairs():
    a, _ = build_pairs(_many(), max_pairs_per_question=3, seed=1)
    b, _ = build_pairs(list(reversed(_many())), max_pairs_per_question=3, seed=1)
    c, _ = build_pairs(_many(), max_pairs_per_question=3, seed=2)
    assert ids(a) == ids(build_pairs(_many(), max_pairs_per_question=3, seed=1)[0])
    assert set(ids(a)) == set(ids(b))  # does not depend on record order
    assert set(ids(a)) != set(ids(c))


def test_reference_as_chosen_against_each_candidate_it_beats():
    records = [
        rec("ref", [None, None], 1, is_reference=True, steps=["r1", "r2"]),
        rec("good", [1, 1], 1),
        rec("bad", [1, 0], 0),
        rec("worst", [0, 0], 0),
    ]
    pairs, report = build_pairs(records, max_pairs_per_question=None, reference_as_chosen=True)
    assert set(ids(pairs)) == {("ref", "bad"), ("ref", "worst"), ("good", "bad"), ("good", "worst")}
    assert report.reference_pairs == 2
    without, _ = build_pairs(records, max_pairs_per_question=None)
    assert all(not p.chosen.is_reference and not p.rejected.is_reference for p in without)
    assert "2 with the reference" in report.summary()


def test_report_lists_questions_without_pairs():
    records = [rec("a", [1], 1, "q1"), rec("b", [0], 0, "q1"), rec("c", [1], 1, "q2"), rec("d", [1], 1, "q2")]
    _, report = build_pairs(records)
    assert report.pairs_per_question == {"q1": 1, "q2": 0}
    assert report.questions_without_pairs == ["q2"]
    assert report.num_pairs == 1


def test_kto_view_desirable_means_outcome_and_all_steps_correct():
    records = [rec("a", [1, 1], 1), rec("b", [1, 0], 1), rec("c", [1, 1], 0), rec("r", [None], 1, is_reference=True)]
    assert [(r.id[-1], d) for r, d in kto_view(records)] == [("a", True), ("b", False), ("c", False)]
    assert kto_view(records, include_reference=True)[-1][1] is True


def test_rft_view_all_correct_or_threshold():
    records = [rec("a", [1, 1, 1], 1), rec("b", [1, 1, 0], 1), rec("c", [1, 1, 1], 0), rec("d", [1, None, 1], 1)]
    assert [r.id[-1] for r in rft_view(records)] == ["a"]  # d has an unlabeled step
    assert [r.id[-1] for r in rft_view(records, threshold=0.6)] == ["a", "b", "d"]
    assert [r.id[-1] for r in rft_view(records, threshold=0.6, require_outcome=False)] == ["a", "b", "c", "d"]
    assert [r.id[-1] for r in rft_view(records, threshold=0.6, how="min")] == ["a", "d"]


def test_step_dpo_prefix_is_the_shared_steps_before_the_first_error():
    def chosen(steps=("s1", "s2", "s3", "end"), labels=(1, 1, 1, 1), outcome=1, **kw):
        return rec("c", list(labels), outcome, steps=list(steps), **kw)

    def rejected(steps, labels):
        return rec("r", labels, 0, steps=steps)

    assert step_dpo_prefix(chosen(), rejected(["s1", "s2", "x3", "end2"], [1, 1, 0, 0])) == 2
    assert step_dpo_prefix(chosen(), rejected(["x1", "x2"], [0, 0])) == 0  # error at the first step: empty prefix
    assert step_dpo_prefix(chosen(), rejected(["s1", "s2", "x3"], [1, None, 0])) == 2  # unlabeled steps skipped
    assert step_dpo_prefix(chosen(), rejected(["s1", "y2", "x3"], [1, 1, 0])) is None  # diverge before the error
    assert step_dpo_prefix(chosen(), rejected(["s1", "s2"], [1, 1])) is None  # no error
    assert step_dpo_prefix(chosen(), rejected(["s1", "s2", "s3", "end"], [1, 1, 1, 0])) is None  # same step
    assert step_dpo_prefix(chosen(steps=["s1"], labels=[1]), rejected(["s1", "x2"], [1, 0])) is None  # too short


def test_step_dpo_chosen_step_must_be_labelled_correct_in_a_correct_solution():
    bad = rec("r", [1, 0, 0], 0, steps=["a", "x", "y"])
    wrong_step = rec("c", [1, 0, 1], 1, steps=["a", "z", "w"])  # its own step 2 is INCORRECT
    wrong_outcome = rec("c", [1, 1, 0], 0, steps=["a", "z", "w"])  # right step, wrong final answer
    unlabeled_step = rec("c", [1, None, 1], 1, steps=["a", "z", "w"])
    good = rec("c", [1, 1, 1], 1, steps=["a", "z", "w"])
    ref = rec("ref", [None, None, None], 1, steps=["a", "z", "w"], is_reference=True)
    assert step_dpo_prefix(wrong_step, bad) is None
    assert step_dpo_prefix(wrong_outcome, bad) is None
    assert step_dpo_prefix(unlabeled_step, bad) is None
    assert step_dpo_prefix(good, bad) == 1
    assert step_dpo_prefix(ref, bad) == 1  # the reference's steps are correct by definition


def test_step_dpo_pairs_never_prefer_an_incorrect_step_on_random_labels():
    import random

    rng = random.Random(0)
    records = []
    for q in range(40):
        for k in range(6):
            steps = [f"s{j}-{rng.randint(0, 1)}" for j in range(4)]
            records.append(rec(f"{k}", [float(rng.random() < 0.6) for _ in steps], rng.randint(0, 1), f"q{q}", steps=steps))
    for comparator in ("pareto", "strict_pareto", "greater_than"):
        pairs, _ = build_pairs(records, comparator=comparator, max_pairs_per_question=None, keep=step_dpo_pair)
        assert pairs, comparator
        for p in pairs:
            e = p.shared_steps
            assert p.chosen.outcome == 1 and p.chosen.labels[e] == 1.0 and p.rejected.labels[e] == 0.0


def test_step_dpo_cap_comes_after_the_filter():
    """Valid Step-DPO pairs are not lost to a cap drawn over pairs the filter then drops."""
    good = [rec(f"g{i}", [1, 1], 1, steps=["a", f"b{i}"]) for i in range(3)]
    other = [rec(f"o{i}", [0, 0], 0, steps=[f"z{i}", "y"]) for i in range(6)]  # diverge at step 0: valid
    near = rec("n", [1, 0], 0, steps=["a", "x"])  # shares step 0 with the good ones: valid
    pairs, report = build_pairs(good + other + [near], max_pairs_per_question=None, keep=step_dpo_pair)
    assert len(pairs) == 3 * 7 and report.filtered_out == 0
    capped, _ = build_pairs(good + other + [near], max_pairs_per_question=5, keep=step_dpo_pair)
    assert len(capped) == 5
    # mostly-invalid pool: 2 valid pairs among many that diverge before the error
    invalid = [rec(f"x{i}", [1, 1, 0], 0, steps=[f"u{i}", "v", "w"]) for i in range(10)]
    valid = rec("v", [1, 1, 0], 0, steps=["a", "b0", "w"])
    chosen = rec("c", [1, 1, 1], 1, steps=["a", "b0", "k"])
    pairs, report = build_pairs([chosen, valid, *invalid], max_pairs_per_question=2, keep=step_dpo_pair)
    assert [(p.chosen.id, p.rejected.id) for p in pairs] == [("q#c", "q#v")]
    assert report.filtered_out == 10


def test_step_dpo_pairs_keep_valid_pairs_and_share_the_preamble():
    ref = rec("ref", [None] * 3, 1, steps=["a", "b", "c"], is_reference=True)
    cand = rec("bad", [1, 0, 0], 0, steps=["a", "x", "y"], preamble="Let's think.")
    other = rec("other", [0, 0, 0], 0, steps=["z", "x", "y"])
    kept, report = build_pairs([ref, cand, other], reference_as_chosen=True, max_pairs_per_question=None,
                               keep=step_dpo_pair)  # fmt: skip
    assert [(p.chosen.id, p.rejected.id, p.shared_steps) for p in kept] == [("q#ref", "q#bad", 1), ("q#ref", "q#other", 0)]
    assert kept[0].chosen.preamble == "Let's think."
    all_pairs, _ = build_pairs([ref, cand, other], reference_as_chosen=True, max_pairs_per_question=None)
    assert report.filtered_out == len(all_pairs) - 2
