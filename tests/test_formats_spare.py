"""The SPARE reader: step splitting, ids, and the official label rules (one test per rule)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spare_train.formats import read_records
from spare_train.report import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
SPARE = FIXTURES / "spare_gsm8k.jsonl"

QUESTION = (
    "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
    "How many bolts in total does it take?"
)
CANDIDATE = (
    "Let's think step by step.\n[1] Half of 2 bolts is 2 / 2 = 1 bolt of white fiber.\n"
    "[2] In total it takes 2 + 1 = 3 bolts.\n[3] Hence, the answer is 3."
)


def row(grading=None, em=1, **over):
    """A realistic SPARE row (GSM8K) with a 3-step candidate; ``grading`` a list is JSON-encoded."""
    r = {
        "context_id": "gsm8k-test-1",
        "instruction": "Solve the math word problem step by step.",
        "question": QUESTION,
        "reference_ans": (
            "It takes 2/2=1 bolt of white fiber\nSo the total is 2+1=3 bolts\nHence, the answer is 3."
        ),
        "grade_ans": CANDIDATE,
        "grading": json.dumps(grading) if isinstance(grading, list) else grading,
        "em": em,
    }
    r.update(over)
    return r


def entry(step, label="CORRECT", **kw):
    return {
        "student_step": step,
        "aligned_reference_steps": [step],
        "explanation": f"step {step}",
        "label": label,
        **kw,
    }


#: a complete grading of CANDIDATE: nothing to repair
FULL = [entry(1), entry(2), entry(3)]


def read(tmp_path, rows, **options):
    p = tmp_path / "graded.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return read_records("spare", p, **options)


def labels_of(tmp_path, grading, em=1, **options):
    records, report = read(tmp_path, [row(grading, em)], **options)
    assert report.kept == 1, report.summary()
    return records[0].labels


# ----------------------------------------------------------------------------- the fixture


def test_fixture_reads_like_the_official_code():
    records, report = read_records("spare", SPARE)
    assert (report.read, report.kept, report.rejected) == (5, 5, [])
    assert report.repaired["grading_json_repaired"] == 2  # the fenced + trailing comma one, the truncated one
    assert report.repaired["ungraded_step"] == 2  # the truncated grading's step 2, the skipped step 2
    assert [w.rsplit(":", 1)[1] for w in report.repaired_at["ungraded_step"]] == ["3", "4"]
    assert [r.id for r in records] == [
        "gsm8k-test-0/431dbd90#0", "gsm8k-test-0/431dbd90#1", "gsm8k-test-0/431dbd90#2",
        "gsm8k-test-1/7a65c7f5#0", "gsm8k-test-1/7a65c7f5#1",
    ]  # fmt: skip
    assert [r.labels for r in records] == [
        [1.0, 1.0, 1.0, 1.0],
        [1.0, 0.0, 0.0],
        [1.0, 0.0, 1.0],  # truncated grading: step 2 has no label -> incorrect; last step = outcome 1
        [1.0, 0.0, 1.0],  # grading skipped step 2 -> incorrect
        [0.0, 0.0, 0.0],
    ]
    assert [r.outcome for r in records] == [1, 0, 1, 1, 0]
    assert [r.answer for r in records] == ["18", "26", "18", "3", "6"]
    first = records[0]
    assert first.preamble == "Let's think step by step."
    assert first.steps[0] == "Janet's ducks lay 16 eggs and she uses 3 + 4 = 7 of them."
    assert first.prompt.instruction.startswith("You are an expert")
    assert first.reference == [
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.",
        "She makes 9 * 2 = $18 every day at the farmer’s market.",
        "Hence, the answer is 18.",
    ]
    assert str(first.source).endswith("spare_gsm8k.jsonl:1")
    wrong = records[1]
    assert wrong.alignment == [[1], [1, 2], [3]]
    assert wrong.error_types == [[], ["missing_step"], ["propagated_error"]]
    assert wrong.explanation[1].startswith("Forgets the 4 eggs")


def test_preamble_is_not_a_step_and_steps_are_stripped(tmp_path):
    records, _ = read(
        tmp_path,
        [row([], grade_ans="Let's think.\n\n[1]  a = 1 \n\n[2]\tb = 2\n[3] Hence, the answer is 3.\n")],
    )
    assert records[0].preamble == "Let's think."
    assert records[0].steps == ["a = 1", "b = 2", "Hence, the answer is 3."]
    assert len(records[0].labels) == 3


def test_candidate_without_markers_is_one_step(tmp_path):
    records, report = read(tmp_path, [row([entry(1)], grade_ans="2 + 1 = 3, so the answer is 3.")])
    assert records[0].steps == ["2 + 1 = 3, so the answer is 3."]
    assert records[0].preamble == ""
    assert report.notes["no_step_markers"] == 1


# ----------------------------------------------------------------------------- label rules
# Each rule that could put a label the grading did not state is a counted repair (with file:line)
# or a rejection; docs/data.md has the table.


def one(tmp_path, grading, em=1, **options):
    """Read one row with ``grading``; ``(record or None, report)``."""
    records, report = read(tmp_path, [row(grading, em)], **options)
    assert report.read == report.kept + len(report.rejected) == 1
    return (records[0] if records else None), report


def rejected_kind(tmp_path, grading, **kw) -> str:
    rec, report = one(tmp_path, grading, **kw)
    assert rec is None, rec
    (rej,) = report.rejected
    assert rej.where.endswith("graded.jsonl:1") and rej.record_id == "gsm8k-test-1/7a65c7f5#0"
    return rej.kind


def assert_repaired(report, kind, n=1):
    assert report.repaired[kind] == n, report.summary()
    assert report.repaired_at[kind][0].endswith("graded.jsonl:1")


def test_rule_a_student_step_given_as_text_or_float_is_that_step_and_counted(tmp_path):
    rec, report = one(tmp_path, [entry("1"), entry(2.0, "INCORRECT"), entry(" 3 ")], last_step_from_outcome=False)
    assert rec.labels == [1.0, 0.0, 1.0]
    assert rec.explanation == ["step 1", "step 2.0", "step  3 "]
    assert_repaired(report, "student_step_coerced")


@pytest.mark.parametrize(
    "bad", ["step 1 is fine", [1, "CORRECT"], {"student_step": True, "label": "CORRECT"}, {"label": "CORRECT"},
            {"student_step": 1.5, "label": "CORRECT"}, {"student_step": "one", "label": "CORRECT"}],
)  # fmt: skip
def test_rule_an_entry_without_a_usable_step_number_rejects_the_candidate(tmp_path, bad):
    assert rejected_kind(tmp_path, [entry(1), bad, entry(2), entry(3)]) == "bad_grading_entry"


def test_rule_a_grading_numbered_from_zero_is_shifted_and_counted(tmp_path):
    rec, report = one(tmp_path, [entry(0), entry(1, "INCORRECT"), entry(2)], last_step_from_outcome=False)
    assert rec.labels == [1.0, 0.0, 1.0]
    assert rec.alignment == [[0], [1], [2]]  # the entries' own fields travel with them
    assert_repaired(report, "grading_zero_based")


@pytest.mark.parametrize("steps", [[1, 2, 3, 4], [0, 1, 3], [-1, 1, 2], [1, 17]])
def test_rule_a_grade_for_a_step_the_candidate_lacks_rejects_it(tmp_path, steps):
    assert rejected_kind(tmp_path, [entry(s) for s in steps]) == "step_out_of_range"


def test_rule_labels_in_other_case_or_with_spaces_are_normalised_and_counted(tmp_path):
    grading = [entry(1, "correct"), entry(2, " INCORRECT\n"), entry(3, "Correct")]
    rec, report = one(tmp_path, grading, last_step_from_outcome=False)
    assert rec.labels == [1.0, 0.0, 1.0]
    assert_repaired(report, "label_normalised")


@pytest.mark.parametrize("label", ["PARTIALLY CORRECT", "NEUTRAL", "", True, 1, ["CORRECT"]])
def test_rule_an_unknown_label_rejects_the_candidate(tmp_path, label):
    assert rejected_kind(tmp_path, [entry(1), entry(2, label), entry(3)]) == "unknown_label"


def test_rule_an_entry_without_a_label_leaves_its_step_ungraded(tmp_path):
    rec, report = one(tmp_path, [entry(1), {"student_step": 2, "explanation": "cut off"}, entry(3)], em=1)
    assert rec.labels == [1.0, 0.0, 1.0]
    assert rec.explanation == ["step 1", "cut off", "step 3"]
    assert_repaired(report, "ungraded_step")


def test_rule_a_step_graded_twice_must_agree(tmp_path):
    assert rejected_kind(tmp_path, [entry(1, "INCORRECT"), entry(2), entry(1, "CORRECT"), entry(3)]) == "conflicting_grades"
    rec, report = one(tmp_path, [entry(1), entry(2, "INCORRECT"), entry(2, "INCORRECT"), entry(3)], em=0)
    assert rec.labels == [1.0, 0.0, 0.0] and not report.repaired


def test_rule_a_step_without_entry_is_incorrect_or_takes_the_outcome_and_is_counted(tmp_path):
    grading = [entry(1)]
    assert labels_of(tmp_path, grading, em=1) == [1.0, 0.0, 1.0]
    assert labels_of(tmp_path, grading, em=1, missed_grading_as_outcome=True) == [1.0, 1.0, 1.0]
    assert labels_of(tmp_path, grading, em=0, missed_grading_as_outcome=True) == [1.0, 0.0, 0.0]
    _, report = one(tmp_path, grading, em=1)
    assert_repaired(report, "ungraded_step")  # step 2; step 3 takes the outcome, which is no guess
    _, report = one(tmp_path, [entry(1), entry(2)], em=1)
    assert not report.repaired


@pytest.mark.parametrize("empty", ["", None, [], "[]", "  ", "null"])
def test_rule_every_empty_grading_means_every_step_is_correct_and_is_counted(tmp_path, empty):
    r = row(em=1)
    r["grading"] = empty
    records, report = read(tmp_path, [r])
    assert records[0].labels == [1.0, 1.0, 1.0]
    assert records[0].alignment is None and records[0].explanation is None
    assert_repaired(report, "empty_grading")


def test_rule_a_missing_grading_field_is_rejected(tmp_path):
    r = row(em=1)
    del r["grading"]
    records, report = read(tmp_path, [r])
    assert records == [] and report.rejected[0].kind == "missing_field" and "'grading'" in report.rejected[0].reason


def test_rule_the_last_step_takes_the_outcome(tmp_path):
    all_correct = [entry(1), entry(2), entry(3)]
    assert labels_of(tmp_path, all_correct, em=0) == [1.0, 1.0, 0.0]
    assert labels_of(tmp_path, [entry(1), entry(2), entry(3, "INCORRECT")], em=1) == [1.0, 1.0, 1.0]
    assert labels_of(tmp_path, all_correct, em=0, last_step_from_outcome=False) == [1.0, 1.0, 1.0]
    assert labels_of(tmp_path, "", em=0) == [1.0, 1.0, 0.0]  # even for an empty grading
    assert labels_of(tmp_path, [entry(1), entry(2), entry(3, "INCORRECT")], em=None) == [1.0, 1.0, 0.0]
    _, report = one(tmp_path, all_correct, em=0)
    assert report.notes["last_step_from_outcome"] == 1 and not report.repaired


@pytest.mark.parametrize(
    "grading, kind",
    [
        ([entry("1"), entry(2), entry(3)], "student_step_coerced"),
        ([entry(0), entry(1), entry(2)], "grading_zero_based"),
        ([entry(1, "correct"), entry(2), entry(3)], "label_normalised"),
        ([entry(1), entry(3)], "ungraded_step"),
        ("[]", "empty_grading"),
    ],
)
def test_strict_refuses_every_repair_that_can_change_a_label(tmp_path, grading, kind):
    with pytest.raises(DataError) as exc:
        read(tmp_path, [row(grading)], strict=True)
    assert exc.value.kind == kind and str(exc.value).startswith(f"{tmp_path / 'graded.jsonl'}:1: {kind}")


def test_strict_accepts_a_grading_whose_json_syntax_was_repaired(tmp_path):
    fenced = "```json\n" + json.dumps([entry(1), entry(2), entry(3)]) + "\n```"
    records, report = read(tmp_path, [row(fenced)], strict=True)
    assert records[0].labels == [1.0, 1.0, 1.0] and report.repaired["grading_json_repaired"] == 1


# ----------------------------------------------------------------------------- step markers


def test_markers_out_of_order_or_repeated_reject_the_candidate(tmp_path):
    grading = [entry(1), entry(2), entry(3)]
    rows = [row(grading, grade_ans="[1] a = 1\n[3] b = 2\n[2] Hence, the answer is 3."),
            row(grading, grade_ans="[1] a = 1\n[1] b = 2\n[2] Hence, the answer is 3."),
            row(grading, grade_ans="[2] a = 1\n[3] b = 2\n[4] Hence, the answer is 3.")]  # fmt: skip
    records, report = read(tmp_path, rows)
    assert records == []
    assert [(r.kind, r.where.rsplit(":", 1)[1]) for r in report.rejected] == [("bad_step_markers", str(i)) for i in (1, 2, 3)]
    assert "[1], [3], [2]" in report.rejected[0].reason


def test_a_marker_inside_a_step_stays_text_and_is_counted(tmp_path):
    text = "Let's see.\n[1] Take a[2] = 5 from the list.\n[2] As in step [1], 5 - 2 = 3.\n[3] Hence, the answer is 3."
    records, report = read(tmp_path, [row([entry(1), entry(2, "INCORRECT"), entry(3)], grade_ans=text)],
                           last_step_from_outcome=False)  # fmt: skip
    assert records[0].steps == ["Take a[2] = 5 from the list.", "As in step [1], 5 - 2 = 3.", "Hence, the answer is 3."]
    assert records[0].labels == [1.0, 0.0, 1.0]
    assert_repaired(report, "step_marker_in_text")
    with pytest.raises(DataError, match="step_marker_in_text"):
        read(tmp_path, [row([entry(1), entry(2), entry(3)], grade_ans=text)], strict=True)


def test_markers_numbered_in_order_on_one_line_are_steps(tmp_path):
    records, report = read(tmp_path, [row([entry(1), entry(2), entry(3)], grade_ans="[1] a = 1 [2] b = 2 [3] The answer is 3.")])
    assert records[0].steps == ["a = 1", "b = 2", "The answer is 3."] and not report.repaired


# ----------------------------------------------------------------------------- grading JSON


def test_malformed_grading_is_repaired_and_counted(tmp_path):
    fenced = (
        '```json\n[{"student_step": 1, "label": "CORRECT"}, {"student_step": 2, "label": "INCORRECT"}, '
        '{"student_step": 3, "label": "INCORRECT"},]\n```'
    )
    unquoted = "[{student_step: 1, label: 'CORRECT'}, {student_step: 2, label: 'CORRECT'}, {student_step: 3, label: 'CORRECT'}]"
    records, report = read(tmp_path, [row(fenced, em=0), row(unquoted, em=1)])
    assert [r.labels for r in records] == [[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert report.repaired["grading_json_repaired"] == 2 and report.repaired_at["grading_json_repaired"][1].endswith(":2")
    assert report.kept == 2


@pytest.mark.parametrize(
    "grading",
    ["I am unable to grade this solution.", '{"student_step": 1, "label": "CORRECT"}', "42",
     "[1] correct [2] wrong [3] correct", "Step 1: CORRECT. Step 2: INCORRECT.", '"CORRECT"'],
)  # fmt: skip
def test_grading_that_is_not_a_list_of_grading_objects_is_rejected(tmp_path, grading):
    records, report = read(tmp_path, [row(grading)])
    assert records == []
    (rej,) = report.rejected
    assert rej.kind == "grading_not_list"
    assert rej.where.endswith("graded.jsonl:1")
    assert rej.record_id == "gsm8k-test-1/7a65c7f5#0"
    assert not report.repaired  # a repair that yields no grading is not a repair


def test_grading_may_already_be_a_list(tmp_path):
    r = row(em=0)
    r["grading"] = [entry(1), entry(2, "INCORRECT"), entry(3, "INCORRECT")]
    records, report = read(tmp_path, [r])
    assert records[0].labels == [1.0, 0.0, 0.0]
    assert not report.repaired


# ----------------------------------------------------------------------------- fields, ids


@pytest.mark.parametrize("em, outcome", [(1, 1), (0, 0), (True, 1), (False, 0), ("1", 1), ("0", 0), (1.0, 1)])
def test_outcome_accepts_ints_bools_and_digit_strings(tmp_path, em, outcome):
    records, _ = read(tmp_path, [row([entry(1), entry(2), entry(3)], em=em)])
    assert records[0].outcome == outcome


def test_bad_or_missing_outcome_is_rejected(tmp_path):
    no_em = row([entry(1)])
    del no_em["em"]
    _, report = read(tmp_path, [row([entry(1)], em="yes"), row([entry(1)], em=0.5), no_em])
    assert [r.kind for r in report.rejected] == ["wrong_type", "wrong_type", "missing_field"]
    assert "'em'" in report.rejected[2].reason
    records, _ = read(tmp_path, [no_em], outcome_field=None)
    assert records[0].outcome is None


def test_ids_number_candidates_within_their_group(tmp_path):
    rows = [
        row([]),
        row([], context_id="gsm8k-test-9"),
        row([]),
        row([], question_id="q7"),
        row([], context_id=None),
    ]
    records, _ = read(tmp_path, rows)
    assert [r.id for r in records] == [
        "gsm8k-test-1/7a65c7f5#0",
        "gsm8k-test-9/7a65c7f5#0",
        "gsm8k-test-1/7a65c7f5#1",
        "gsm8k-test-1/q7#0",  # both ids: the pair the official configs key on
        "q-7a65c7f5038e#0",  # no ids at all: a hash of the question
    ]
    assert records[0].group_id == records[2].group_id
    assert records[0].extra == {"context_id": "gsm8k-test-1"}


def test_question_id_alone_is_the_group(tmp_path):
    records, _ = read(tmp_path, [row([], context_id=None, question_id="2hop__13548_13529")] * 2)
    assert [r.id for r in records] == ["2hop__13548_13529#0", "2hop__13548_13529#1"]


def test_one_question_id_with_two_question_texts_is_two_groups(tmp_path):
    rows = [row(FULL, question_id="q7"), row(FULL, question_id="q7", question="How many bolts for two robes?"),
            row(FULL, question_id="q7")]  # fmt: skip
    records, report = read(tmp_path, rows)
    first, other, again = (r.group_id for r in records)
    assert first == again == "gsm8k-test-1/q7" and other.startswith("gsm8k-test-1/q7~") and other != first
    assert [r.id for r in records] == ["gsm8k-test-1/q7#0", f"{other}#0", "gsm8k-test-1/q7#1"]
    assert report.repaired["group_id_conflict"] == 1 and report.repaired_at["group_id_conflict"] == [f"{tmp_path / 'graded.jsonl'}:2"]
    with pytest.raises(DataError, match="group_id_conflict"):
        read(tmp_path, rows, strict=True)


def test_ids_of_different_json_types_never_merge_different_questions(tmp_path):
    rows = [row(FULL, context_id=None, question_id=7), row(FULL, context_id=None, question_id="7", question="What is 7?")]
    records, report = read(tmp_path, rows)
    assert records[0].group_id == "7" and records[1].group_id.startswith("7~")
    same = [row(FULL, context_id=None, question_id=7), row(FULL, context_id=None, question_id="7")]
    records, report = read(tmp_path, same)  # the same question under 7 and "7": one group
    assert {r.group_id for r in records} == {"7"} and not report.repaired
    records, report = read(tmp_path, [row(FULL, question_id=[7])])
    assert report.rejected[0].kind == "wrong_type" and "'question_id'" in report.rejected[0].reason


def test_a_joined_id_that_collides_is_another_group(tmp_path):
    rows = [row(FULL, context_id="doc/a", question_id="q1"), row(FULL, context_id="doc", question_id="a/q1")]
    records, report = read(tmp_path, rows)  # both join to "doc/a/q1", same question text
    assert records[0].group_id == "doc/a/q1" and records[1].group_id.startswith("doc/a/q1~")
    assert report.repaired["group_id_conflict"] == 1


def test_context_is_kept_in_the_prompt(tmp_path):
    records, _ = read(tmp_path, [row([], context="Paragraph 1: ...", question_id="q1")])
    assert records[0].prompt.context == "Paragraph 1: ..."
    assert records[0].prompt.user_text().startswith("Paragraph 1: ...\n\n")


def test_field_names_are_options(tmp_path):
    r = {"response": CANDIDATE, "step_grading": json.dumps([entry(1), entry(2, "INCORRECT")]), "outcome": 0,
         "problem": QUESTION, "id": "x1"}  # fmt: skip
    records, _ = read(
        tmp_path, [r], response_field="response", grading_field="step_grading", outcome_field="outcome",
        question_field="problem", question_id_field="id",
    )  # fmt: skip
    assert records[0].id == "x1#0"
    assert records[0].labels == [1.0, 0.0, 0.0]


def test_empty_and_malformed_candidates_are_rejected(tmp_path):
    rows = [
        row([], grade_ans=""),
        row([], grade_ans="[1]   \n[2] \n"),
        row([], grade_ans=["[1] a", "[2] b"]),
        row([], question=None),
    ]
    records, report = read(tmp_path, rows)
    assert records == []
    assert [(r.kind, r.where.rsplit(":", 1)[1]) for r in report.rejected] == [
        ("empty_candidate", "1"),
        ("empty_candidate", "2"),
        ("wrong_type", "3"),
        ("missing_field", "4"),
    ]
    assert "'question'" in report.rejected[3].reason
    assert report.read == report.kept + len(report.rejected) == 4


# ----------------------------------------------------------------------------- add_reference


def test_add_reference_emits_one_all_correct_candidate_per_group():
    records, report = read_records("spare", SPARE, add_reference=True)
    refs = [r for r in records if r.is_reference]
    assert [r.id for r in refs] == ["gsm8k-test-0/431dbd90#ref", "gsm8k-test-1/7a65c7f5#ref"]
    marked, lines = refs
    assert marked.steps[0] == "Janet sells 16 - 3 - 4 = 9 duck eggs a day."  # split on [k] markers
    assert lines.steps == [  # no markers: one step per line
        "It takes 2/2=1 bolt of white fiber",
        "So the total amount of fabric is 2+1=3 bolts of fabric",
        "Hence, the answer is 3.",
    ]
    assert all(r.labels == [1.0] * len(r.steps) and r.outcome == 1 for r in refs)
    assert marked.answer == "18" and lines.answer == "3"
    assert report.read == 7 and report.kept == 7


def test_reference_survives_a_rejected_first_candidate(tmp_path):
    records, report = read(tmp_path, [row("not a grading at all"), row([])], add_reference=True)
    assert [r.id for r in records] == ["gsm8k-test-1/7a65c7f5#ref", "gsm8k-test-1/7a65c7f5#1"]
    assert report.read == 3 and len(report.rejected) == 1


def test_reference_is_emitted_once_across_files(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps(row([])) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(row([])) + "\n")
    records, _ = read_records("spare", tmp_path, add_reference=True)
    assert [r.id for r in records] == [
        "gsm8k-test-1/7a65c7f5#0",
        "gsm8k-test-1/7a65c7f5#ref",
        "gsm8k-test-1/7a65c7f5#1",
    ]


def test_strict_mode_raises_on_the_first_bad_row(tmp_path):
    with pytest.raises(DataError) as exc:
        read(tmp_path, [row([entry(1), entry(2), entry(3)]), row("I could not grade this.")], strict=True)
    assert str(exc.value).startswith(f"{tmp_path / 'graded.jsonl'}:2: grading_not_list")
