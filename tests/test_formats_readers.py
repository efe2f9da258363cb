"""The peer-format readers: TRL stepwise, Math-Shepherd, PRM800K, ProcessBench, GSM8K solutions."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from spare_train.formats import read_records
from spare_train.report import DataError

FIXTURES = Path(__file__).parent / "fixtures" / "formats"
GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "model_solutions.jsonl"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def first_row(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8").splitlines()[0])


# ----------------------------------------------------------------------------- stepwise (TRL)


def test_stepwise_fixture():
    records, report = read_records("stepwise", FIXTURES / "stepwise.jsonl")
    assert report.kept == 3
    a, b, chat = records
    assert a.labels == [1.0] * 5 and b.labels == [0.0, 1.0, 0.0]
    assert a.group_id == b.group_id and a.group_id.startswith("p-")
    assert (a.id, b.id) == (f"{a.group_id}#0", f"{a.group_id}#1")
    assert a.steps[0].startswith("Step 1: He saved up $110")
    assert (a.answer, b.answer) == ("5", "3")
    assert chat.id == "chat-0" and chat.labels == [1.0, 1.0, 0.9]
    assert chat.prompt.instruction == "Solve the problem step by step."
    assert chat.prompt.question == "What is 12 * 12 - 4?"
    assert chat.answer == "140"


@pytest.mark.parametrize(
    "change, kind",
    [
        ({"labels": [True, False]}, "label_count_mismatch"),
        ({"labels": [True, 1.5, True]}, "bad_label"),
        ({"labels": [True, float("nan"), True]}, "bad_label"),
        ({"labels": [True, "yes", True]}, "bad_label"),
        ({"completions": [], "labels": []}, "no_steps"),
        ({"completions": ["", "  ", "\n"]}, "empty_candidate"),
        ({"completions": "Step 1: ... Step 2: ..."}, "wrong_type"),
        ({"prompt": None}, "missing_field"),
        ({"prompt": 7}, "wrong_type"),
    ],
)
def test_stepwise_rejections(tmp_path, change, kind):
    good = {
        "id": "r1",
        "prompt": "What is 2 + 3 * 4?",
        "completions": ["3 * 4 = 12.", "2 + 12 = 14.", "The answer is 14."],
        "labels": [True, True, True],
    }
    records, report = read_records("stepwise", write_jsonl(tmp_path / "s.jsonl", [{**good, **change}]))
    assert records == []
    (rej,) = report.rejected
    assert (rej.kind, rej.record_id) == (kind, "r1")
    assert rej.where == f"{tmp_path / 's.jsonl'}:1"


def test_stepwise_null_label_is_unlabeled(tmp_path):
    row = {
        "prompt": "What is 2 + 3?",
        "completions": ["2 + 3 = 5.", "The answer is 5."],
        "labels": [None, True],
        "outcome": 1,
    }
    records, _ = read_records("stepwise", write_jsonl(tmp_path / "s.jsonl", [row]))
    assert records[0].labels == [None, 1.0] and records[0].outcome == 1


# ----------------------------------------------------------------------------- Math-Shepherd


def test_math_shepherd_fixture():
    records, report = read_records("math_shepherd", FIXTURES / "math_shepherd.jsonl")
    assert report.kept == 2
    pizza, sqrt = records
    assert pizza.prompt.question.startswith("If Buzz bought a pizza") and pizza.prompt.question.endswith(
        "waiter ate?"
    )
    assert pizza.steps[0] == "Step 1: The total ratio representing the pizza is 5+8 = <<5+8=13>>13."
    assert pizza.steps[-1] == "Step 5: The waiter ate 52 slices of the pizza. The answer is: 52"
    assert pizza.labels == [1.0, 0.0, 0.0, 0.0, 0.0]  # the "+" in "5+8" is maths, not a label
    assert (pizza.outcome, pizza.answer, pizza.extra["task"]) == (0, "52", "GSM8K")
    assert sqrt.labels == [1.0, 1.0, 1.0] and sqrt.outcome == 1 and sqrt.answer == "12"


def _ms(question: str, steps: list[str], marks: str, sep: str = " ") -> dict:
    return {
        "input": question + sep + "".join(f"{s} ки\n" for s in steps).rstrip("\n"),
        "label": question
        + sep
        + "".join(f"{s} {m}\n" for s, m in zip(steps, marks, strict=True)).rstrip("\n"),
        "task": "GSM8K",
    }


def test_math_shepherd_without_step_prefixes_and_prefix_stripping(tmp_path):
    rows = [
        _ms(
            "Tom has 3 apples and buys 2 more. How many now?",
            ["He has 3 + 2 = 5 apples.", "The answer is: 5"],
            "++",
            "\n",
        ),
        _ms("What is 6 * 7?", ["Step 1: 6 * 7 = 42.", "Step 2: The answer is: 42"], "+-"),
    ]
    records, _ = read_records(
        "math_shepherd", write_jsonl(tmp_path / "m.jsonl", rows), strip_step_prefix=True
    )
    assert records[0].prompt.question == "Tom has 3 apples and buys 2 more. How many now?"
    assert records[0].steps == ["He has 3 + 2 = 5 apples.", "The answer is: 5"]
    assert records[1].steps == ["6 * 7 = 42.", "The answer is: 42"]
    assert records[1].labels == [1.0, 0.0]


def test_math_shepherd_tag_inside_the_question_is_dropped(tmp_path):
    row = {  # as in a few published rows: a stray tag (and its label) inside the question
        "input": "Parker has 4 cards ки and gets 3 more. How many? "
        "Step 1: 4 + 3 = 7. ки\nStep 2: The answer is: 7 ки",
        "label": "Parker has 4 cards + and gets 3 more. How many? "
        "Step 1: 4 + 3 = 7. +\nStep 2: The answer is: 7 +",
    }
    records, report = read_records("math_shepherd", write_jsonl(tmp_path / "m.jsonl", [row]))
    assert records[0].prompt.question == "Parker has 4 cards and gets 3 more. How many?"
    assert records[0].labels == [1.0, 1.0]
    assert report.repaired["tag_in_question"] == 1  # a dropped label is a repair: strict refuses it
    assert report.repaired_at["tag_in_question"] == [f"{tmp_path / 'm.jsonl'}:1"]
    with pytest.raises(DataError, match="tag_in_question"):
        read_records("math_shepherd", tmp_path / "m.jsonl", strict=True)


def test_math_shepherd_question_that_mentions_step_1_is_not_cut_there(tmp_path):
    question = "A recipe says: step 1: mix 2 cups, step 2: add 3 cups. How many cups in all?"
    rows = [_ms(question, ["Step 1: 2 + 3 = 5.", "Step 2: The answer is: 5"], "+-"),
            _ms(question, ["2 + 3 = 5.", "The answer is: 5"], "++", "\n")]  # fmt: skip
    records, report = read_records("math_shepherd", write_jsonl(tmp_path / "m.jsonl", rows))
    assert [r.prompt.question for r in records] == [question, question]
    assert records[0].steps == ["Step 1: 2 + 3 = 5.", "Step 2: The answer is: 5"] and records[0].labels == [1.0, 0.0]
    assert records[0].group_id == records[1].group_id and not report.repaired


def test_math_shepherd_label_text_of_the_same_length_but_another_text_is_rejected(tmp_path):
    row = _ms("What is 6 * 7?", ["Step 1: 6 * 7 = 42.", "Step 2: The answer is: 42"], "+-")
    other = _ms("What is 6 * 8?", ["Step 1: 6 * 8 = 48.", "Step 2: The answer is: 48"], "--")
    records, report = read_records("math_shepherd", write_jsonl(tmp_path / "m.jsonl", [{**row, "label": other["label"]}]))
    assert records == [] and report.rejected[0].kind == "label_text_mismatch"
    assert "at character 12" in report.rejected[0].reason


@pytest.mark.parametrize(
    "mutate, kind",
    [
        (lambda r: {**r, "label": r["label"] + " extra"}, "label_text_mismatch"),
        (lambda r: {**r, "label": r["label"].replace(" +\n", " ?\n", 1)}, "bad_label"),
        (
            lambda r: {
                **r,
                "input": r["input"].replace(" ки", ""),
                "label": r["label"].replace(" +", "").replace(" -", ""),
            },
            "no_steps",
        ),
        (lambda r: {k: v for k, v in r.items() if k != "label"}, "missing_field"),
    ],
)
def test_math_shepherd_rejections(tmp_path, mutate, kind):
    row = mutate(_ms("What is 6 * 7?", ["Step 1: 6 * 7 = 42.", "Step 2: The answer is: 42"], "+-"))
    _, report = read_records("math_shepherd", write_jsonl(tmp_path / "m.jsonl", [row]))
    assert [r.kind for r in report.rejected] == [kind]


# ----------------------------------------------------------------------------- PRM800K


def test_prm800k_follows_the_chosen_path():
    records, report = read_records("prm800k", FIXTURES / "prm800k.jsonl")
    assert report.kept == 2
    found_error, solution = records
    # step 3 has no chosen completion: the first one rated -1 is taken
    assert found_error.steps[2] == "I know that $200,\\!000 = 2^5\\cdot 10^4 = 2^9\\cdot 5^4$."
    assert found_error.labels == [1.0, 1.0, 0.0]  # rating 0 -> 1.0 by default
    assert found_error.outcome == 0
    assert found_error.reference[0].startswith("The prime factorization")
    # phase 1: a human-written step replaces the rejected completion
    assert solution.steps[1].startswith("The numerator is never zero")
    assert solution.labels == [1.0, 1.0, 1.0] and solution.outcome == 1
    assert solution.answer == "2"  # from "# Answer\n\n2"
    assert found_error.id.startswith("prm-") and found_error.id.endswith("#0")


@pytest.mark.parametrize("neutral_as, first", [(1.0, 1.0), (0.0, 0.0), (None, None)])
def test_prm800k_neutral_as(neutral_as, first):
    records, _ = read_records("prm800k", FIXTURES / "prm800k.jsonl", neutral_as=neutral_as)
    assert records[0].labels[0] == first


def test_prm800k_without_a_minus_one_takes_the_first_completion(tmp_path):
    row = first_row("prm800k.jsonl")
    last = row["label"]["steps"][-1]
    for c in last["completions"]:
        c["rating"] = 0
    row["label"]["finish_reason"] = "give_up"
    records, _ = read_records("prm800k", write_jsonl(tmp_path / "p.jsonl", [row]))
    assert records[0].steps[-1].startswith("To factor $20 !$")
    assert records[0].outcome is None


def test_prm800k_bad_rating_and_missing_problem(tmp_path):
    bad = first_row("prm800k.jsonl")
    bad["label"]["steps"][0]["completions"][0]["rating"] = 2
    missing = first_row("prm800k.jsonl")
    del missing["question"]["problem"]
    _, report = read_records("prm800k", write_jsonl(tmp_path / "p.jsonl", [bad, missing]))
    assert [(r.kind, r.where.rsplit(":", 1)[1]) for r in report.rejected] == [
        ("bad_label", "1"),
        ("missing_field", "2"),
    ]


# ----------------------------------------------------------------------------- ProcessBench


def test_processbench_first_error_labels_and_json_list_positions():
    records, report = read_records("processbench", FIXTURES / "processbench.json")
    assert report.kept == 3
    assert [r.id for r in records] == ["gsm8k-0", "gsm8k-1", "math-7"]
    assert [r.labels for r in records] == [[1.0] * 5, [0.0, None, None], [1.0, 1.0, 0.0, None]]
    assert [r.outcome for r in records] == [1, 0, 0]
    assert [r.answer for r in records] == ["24", "6", "60"]
    assert [r.source.line for r in records] == [1, 2, 3]  # 1-based item of the JSON list


def test_processbench_after_error_incorrect():
    records, _ = read_records("processbench", FIXTURES / "processbench.json", after_error="incorrect")
    assert records[2].labels == [1.0, 1.0, 0.0, 0.0]


def test_processbench_label_out_of_range_is_rejected(tmp_path):
    row = {"id": "math-9", "problem": "Compute 2+2.", "steps": ["2+2=4.", "The answer is 4."], "label": 2}
    _, report = read_records(
        "processbench", write_jsonl(tmp_path / "p.jsonl", [row, {**row, "id": "math-10", "label": "1"}])
    )
    assert [(r.kind, r.record_id) for r in report.rejected] == [
        ("bad_label", "math-9"),
        ("wrong_type", "math-10"),
    ]


# ----------------------------------------------------------------------------- GSM8K model solutions


def test_gsm8k_solutions_one_row(tmp_path):
    row = {
        "question": "A robe takes 2 bolts of blue fiber and half that much white fiber.  "
        "How many bolts in total does it take?",
        "ground_truth": "It takes 2/2=<<2/2=1>>1 bolt of white fiber\n"
        "So the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\nA: 3",
        "6b_finetuning": {
            "is_correct": True,
            "solution": "It takes 2*1/2=<<2*1/2=1.0>>1 bolt of white fiber\n"
            "So it takes 2+1=<<2+1=3>>3 bolts\nA: 3",
        },
        "6b_verification": {
            "is_correct": True,
            "solution": "It takes 2 x 0.5 = <<2*0.5=1.0>>1.0 bolts of white fiber.\nA: 3.0",
        },
        "175b_finetuning": {
            "is_correct": False,
            "solution": "A bolt of blue fiber is 100 meters long\nSo it takes 2*100 = <<2*100=200>>200",
        },
        "175b_verification": {"solution": "2 + 1 = 3\nA: 3"},
    }
    records, report = read_records(
        "gsm8k_solutions", write_jsonl(tmp_path / "g.jsonl", [row]), keep_calculator_annotations=False
    )
    gid = records[0].group_id
    assert [r.id for r in records] == [
        f"{gid}#6b_finetuning",
        f"{gid}#6b_verification",
        f"{gid}#175b_finetuning",
        f"{gid}#ground_truth",
    ]
    ft, ver, cut, ref = records
    assert ft.steps == ["It takes 2*1/2=1 bolt of white fiber", "So it takes 2+1=3 bolts", "A: 3"]
    assert ft.labels == [None, None, None] and ft.outcome == 1 and ft.answer == "3"
    assert ver.answer == "3"  # "3.0" normalised
    assert cut.answer is None and cut.outcome == 0
    assert ref.is_reference and ref.labels == [1.0] * 3 and ref.outcome == 1 and ref.answer == "3"
    assert ft.reference == ref.steps
    (rej,) = report.rejected  # the candidate without is_correct, alone
    assert (rej.kind, rej.record_id) == ("missing_field", f"{gid}#175b_verification")
    assert report.read == 5 and report.notes["no_final_answer"] == 1


@pytest.mark.skipif(not GSM8K.exists(), reason="shared data folder not present")
def test_gsm8k_solutions_whole_file():
    records, report = read_records("gsm8k_solutions", GSM8K)
    assert len(records) == 5000 and report.read == 5000 and report.kept == 5000 and not report.rejected
    assert report.read == report.kept + len(report.rejected)
    refs = [r for r in records if r.is_reference]
    cands = [r for r in records if not r.is_reference]
    assert len(refs) == 1000 and all(r.outcome == 1 and set(r.labels) == {1.0} for r in refs)
    outcomes = Counter(r.outcome for r in cands)
    assert outcomes[0] + outcomes[1] == 4000
    assert 0.30 < outcomes[1] / 4000 < 0.45  # README: about 38% correct
    assert len({r.group_id for r in records}) == 1000
    assert all(r.labels == [None] * len(r.steps) for r in cands)
    assert sum(r.answer is not None for r in cands) >= 3980
    assert records[0].answer == "26" and records[4].answer == "18"  # Janet's ducks: 6b_finetuning, reference
    assert report.notes["no_final_answer"] < 20
