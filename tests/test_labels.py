"""Label policies, one behaviour per test."""

from __future__ import annotations

import pytest

from spare_train.labels import apply_policies, build_policy, consensus, first_error, hard, outcome_only
from spare_train.records import Prompt, StepRecord
from spare_train.report import DataError, Report


def rec(labels, outcome=1, **kw) -> StepRecord:
    n = len(labels)
    return StepRecord(
        id="r", group_id="g", prompt=Prompt("q"), steps=[f"s{i}" for i in range(n)], labels=list(labels),
        outcome=outcome, alignment=[[i + 1] for i in range(n)], **kw,
    )


def test_hard_binarises_at_threshold_and_keeps_unlabeled():
    assert hard()(rec([0.7, 0.5, 0.49, None])).labels == [1.0, 1.0, 0.0, None]
    assert hard(0.8)(rec([0.7, 0.9])).labels == [0.0, 1.0]


def test_first_error_drops_steps_after_the_first_incorrect_one():
    r = first_error()(rec([1.0, 1.0, 0.0, 1.0, 0.0]))
    assert r.steps == ["s0", "s1", "s2"] and r.labels == [1.0, 1.0, 0.0] and r.alignment == [[1], [2], [3]]


def test_first_error_keeps_all_correct_records_whole_and_skips_unlabeled():
    assert first_error()(rec([1.0, None, 1.0])).num_steps == 3
    assert first_error()(rec([None, 0.2, 1.0])).num_steps == 2


def test_outcome_only_labels_just_the_last_step():
    assert outcome_only()(rec([1.0, 0.0, 1.0], outcome=0)).labels == [None, None, 0.0]
    with pytest.raises(DataError, match="no_outcome"):
        outcome_only()(rec([1.0], outcome=None))


def test_consensus_keeps_agreeing_first_errors():
    r = rec([1.0, 0.0, 0.0], extra={"mc_labels": [0.9, 0.1, 0.6]})
    assert consensus()(r) is r


def test_consensus_rejects_disagreement_and_missing_source():
    with pytest.raises(DataError, match="consensus_disagree"):
        consensus()(rec([1.0, 0.0, 0.0], extra={"mc_labels": [0.9, 0.8, 0.1]}))
    with pytest.raises(DataError, match="consensus_missing"):
        consensus()(rec([1.0, 0.0]))


def test_policies_compose_in_order_and_report_rejections():
    report = Report(read=3)
    recs = [rec([1.0, 0.3, 1.0]), rec([0.6, 0.6], extra={"mc_labels": [1, 1]}), rec([0.0], outcome=None)]
    recs[2].extra["mc_labels"] = [1.0]
    out = apply_policies(recs, [{"name": "consensus"}, "first_error", "hard"], report)
    assert [r.labels for r in out] == [[1.0, 1.0]]
    assert report.kept == 1 and [r.kind for r in report.rejected] == ["consensus_missing", "consensus_disagree"]


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown label policy 'firsterror'"):
        build_policy("firsterror")
