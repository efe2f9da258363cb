"""Synthetic SPARE data: determinism, labels that agree with the arithmetic, the official format."""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from pathlib import Path

import json_repair
import pytest

from spare_train import synth

ROOT = Path(__file__).resolve().parents[1]
STEP = re.compile(r"^(\d+) ([+*-]) (\d+) = (\d+)$")
FINAL = re.compile(r"^The answer is (\d+)\.$")
OPS = {"add": "+", "subtract": "-", "multiply by": "*"}
APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def gen(num_questions: int, **kw):
    """``synth.generate`` of a ``SynthConfig`` with these settings."""
    return synth.generate(synth.SynthConfig(num_questions=num_questions, **kw))


def parse_question(row: dict) -> tuple[int, list[tuple[str, int]]]:
    text = f"{row.get('context', '')} {row['question']}"
    start = int(re.search(r"Start with (\d+)\.", text).group(1))
    ops = [(OPS[m.group(1).lower()], int(m.group(2)))
           for m in re.finditer(r"(add|subtract|multiply by) (\d+)", text, re.IGNORECASE)]
    return start, ops


def split_steps(text: str) -> tuple[str, list[str]]:
    parts = re.split(r"\n*\[\d+\]\s*", text)
    return parts[0], parts[1:]


def judge(row: dict) -> tuple[list[str], str | None, int]:
    """Re-grade a candidate from its text alone: labels, first error kind, final answer."""
    start, ops = parse_question(row)
    _, steps = split_steps(row["grade_ans"])
    assert len(steps) == len(ops) + 1
    value, labels, kind = start, [], None
    for (op, k), step in zip(ops, steps):
        a, s_op, b, r = STEP.match(step).groups()
        a, b, r = int(a), int(b), int(r)
        if kind is None:
            if a != value:
                kind = "copy"
            elif (s_op, b) != (op, k):
                kind = "misread"
            elif r != APPLY[s_op](a, b):
                kind = "calculation"
        else:  # after the error every step is computed right from the wrong value
            assert a == value and (s_op, b) == (op, k) and r == APPLY[op](a, b)
        labels.append("CORRECT" if kind is None else "INCORRECT")
        value = r
    final = int(FINAL.match(steps[-1]).group(1))
    if kind is None and final != value:
        kind = "copy"
    labels.append("CORRECT" if kind is None else "INCORRECT")
    return labels, kind, final


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return gen(150, seed=11, preamble_rate=0.2, malformed_rate=0.2, context_rate=0.2)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a = synth.write_jsonl(gen(30, seed=5), tmp_path / "a.jsonl")
    b = synth.write_jsonl(gen(30, seed=5), tmp_path / "b.jsonl")
    c = synth.write_jsonl(gen(30, seed=6), tmp_path / "c.jsonl")
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert len(a.read_text(encoding="utf-8").splitlines()) == 30 * 4


def test_labels_agree_with_the_planted_error(rows):
    for row in rows:
        grading = json_repair.loads(row["grading"])
        labels, kind, final = judge(row)
        assert [g["student_step"] for g in grading] == list(range(1, len(labels) + 1))
        assert [g["label"] for g in grading] == labels
        first = labels.index("INCORRECT") if "INCORRECT" in labels else -1
        for i, g in enumerate(grading):
            assert g["reference_steps"] == [i + 1]
            assert g["explanation"]
            expected = None if first < 0 or i < first else kind if i == first else synth.PROPAGATED
            assert g.get("error_type") == expected


def test_an_explanation_states_its_judgement_first_then_the_check():
    """A critic that quotes a step writes the judgement right after it, where a PRM scores the
    step (docs/critique.md): ``Correctly computes a op k = r.`` against ``Incorrectly computes
    a op k: it is x, not r.``; the final step ``Correctly states v, the last result.`` against
    ``Incorrectly states w: the last result is v.``"""
    rows = gen(300, seed=3)
    seen = Counter()
    for row in rows:
        steps = [s.split("] ", 1)[1] for s in row["grade_ans"].split("\n") if s.startswith("[")]
        grading = json_repair.loads(row["grading"])
        for i, (step, g) in enumerate(zip(steps, grading, strict=True)):
            e, m, f = g["explanation"], STEP.match(step), FINAL.match(step)
            previous = STEP.match(steps[i - 1]) if i else None
            if g["label"] == "CORRECT":
                want = (f"Correctly computes {m.group(1)} {m.group(2)} {m.group(3)} = {m.group(4)}."
                        if m else f"Correctly states {f.group(1)}, the last result.")  # fmt: skip
                assert e == want
                seen["correct"] += 1
            elif g.get("error_type") == "calculation":
                assert re.fullmatch(rf"Incorrectly computes {m.group(1)} {re.escape(m.group(2))} {m.group(3)}: it is \d+, not {m.group(4)}\.", e)
                seen["wrong"] += 1
            elif g.get("error_type") == "copy" and f:  # an error in the final step
                assert e == f"Incorrectly states {f.group(1)}: the last result is {previous.group(4)}."
                seen["final"] += 1
    assert seen["correct"] > 100 and seen["wrong"] > 50 and seen["final"] > 5


def test_em_and_extracted_follow_the_final_answer(rows):
    for row in rows:
        labels, _, final = judge(row)
        _, ref = split_steps(row["reference_ans"])
        ref_final = int(FINAL.match(ref[-1]).group(1))
        assert row["em"] == int(final == ref_final) == int("INCORRECT" not in labels)
        assert row["extracted"] == str(final)


def test_reference_is_correct_and_numbers_stay_small(rows):
    for row in rows:
        start, ops = parse_question(row)
        _, ref = split_steps(row["reference_ans"])
        value = start
        for (op, k), step in zip(ops, ref):
            value = APPLY[op](value, k)
            assert step == f"{STEP.match(step).group(1)} {op} {k} = {value}"
            assert 0 <= value <= 99
        assert ref[-1] == f"The answer is {value}."
        assert all(0 <= int(n) <= 999 for n in re.findall(r"\d+", row["grade_ans"]))


def test_all_error_types_occur_and_about_half_the_candidates_are_wrong():
    many = gen(400, seed=3)
    types = Counter(
        g.get("error_type") for row in many for g in json_repair.loads(row["grading"])
    )
    assert {"calculation", "copy", "misread", synth.PROPAGATED} <= set(types)
    wrong = sum(1 - row["em"] for row in many) / len(many)
    assert 0.4 < wrong < 0.6


def test_error_rate_and_type_options():
    assert all(r["em"] == 1 for r in gen(20, seed=1, error_rate=0.0))
    only = gen(40, seed=1, error_rate=1.0, error_types=("calculation",))
    assert all(r["em"] == 0 for r in only)
    kinds = {judge(r)[1] for r in only}
    assert kinds <= {"calculation", "copy"}  # copy only for a wrong final "The answer is" step
    with pytest.raises(ValueError):
        gen(1, seed=0, error_types=("nonsense",))


def test_grading_is_a_json_string_some_slightly_malformed(rows):
    broken = 0
    for row in rows:
        assert isinstance(row["grading"], str)
        try:
            parsed = json.loads(row["grading"])
        except json.JSONDecodeError:
            broken += 1
            parsed = json_repair.loads(row["grading"])
        assert isinstance(parsed, list) and all(isinstance(g, dict) for g in parsed)
    assert 0 < broken < len(rows)


def test_official_format_fields_markers_preamble_and_context(rows):
    keys = {"question_id", "output_idx", "instruction", "question", "reference_ans", "grade_ans",
            "grading", "em", "extracted"}
    groups = Counter(r["question_id"] for r in rows)
    assert set(groups.values()) == {4}
    preambles = contexts = 0
    for row in rows:
        assert keys <= set(row) <= keys | {"context"}
        assert row["instruction"] == synth.DEFAULT_INSTRUCTION
        preamble, steps = split_steps(row["grade_ans"])
        assert row["grade_ans"].startswith(preamble)
        assert row["grade_ans"][len(preamble):].lstrip().startswith("[1] ")
        assert preamble in ("", synth.PREAMBLE.strip())
        preambles += bool(preamble)
        if "context" in row:
            contexts += 1
            assert row["context"].startswith("Start with") and "Start" not in row["question"]
        assert split_steps(row["reference_ans"])[0] == ""
    assert preambles and contexts


def test_shipped_files_are_what_the_documented_command_makes(tmp_path):
    """Run data/README.md's commands (through the CLI, as a user would) and compare bytes."""
    from spare_train.cli import main

    readme = (ROOT / "data" / "README.md").read_text(encoding="utf-8")
    opts = re.search(r'OPTS="([^"]*)"', readme)
    assert opts, "data/README.md lacks the OPTS of its regeneration commands"
    questions = {}
    for name in ("train", "test"):
        shipped = ROOT / "data" / "synth" / f"{name}.jsonl"
        cmd = re.search(rf"spare-train data synth (.*) --output data/synth/{name}\.jsonl", readme)
        assert cmd, f"data/README.md lacks the command for {name}.jsonl"
        argv = shlex.split(cmd.group(1).replace("$OPTS", opts.group(1)))
        made = tmp_path / f"{name}.jsonl"
        assert main(["data", "synth", *argv, "--output", str(made)]) == 0
        assert made.read_bytes() == shipped.read_bytes()
        questions[name] = {json.loads(line)["question"] for line in shipped.open(encoding="utf-8")}
    assert not questions["train"] & questions["test"], "held-out questions also occur in training"
    total = sum(p.stat().st_size for p in (ROOT / "data" / "synth").glob("*.jsonl"))
    assert total < 6.5e6


def test_train_and_test_splits_never_share_a_question():
    small = dict(max_start=9, max_addend=3, max_multiplier=2, max_value=9)
    train = {r["question"] for r in gen(300, seed=0, split="train", **small)}
    test = {r["question"] for r in gen(100, seed=1, split="test", **small)}
    assert train and test and not train & test
    assert gen(10, seed=4) == gen(10, seed=4, split="all")
    with pytest.raises(ValueError):
        gen(1, seed=0, split="validation")
