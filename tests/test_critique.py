"""Critique data without a model: the template renders and parses back losslessly (property-style,
over many synthetic records and random explanations), malformed critiques come back with the
reason, critique and refinement views, the plain critique reader and the critic label policy."""

from __future__ import annotations

import json
import random

import pytest

from spare_train import synth
from spare_train.critique.template import TEMPLATE, Critique, CritiqueTemplate, StepCritique, clean_explanation
from spare_train.critique.views import TEMPLATED, critique_of, critique_records, refinement_examples
from spare_train.formats import read_records
from spare_train.labels import apply_policies
from spare_train.records import Prompt, StepRecord
from spare_train.report import DataError, Report


@pytest.fixture(scope="module")
def synth_records(tmp_path_factory):
    """Records of several synthetic configurations: every error type, contexts, preambles."""
    folder = tmp_path_factory.mktemp("critique")
    records = []
    for seed in range(4):
        cfg = synth.SynthConfig(num_questions=60, seed=seed, max_ops=5, context_rate=0.3, preamble_rate=0.2,
                                malformed_rate=0.1, error_rate=0.7)  # fmt: skip
        path = synth.write_jsonl(synth.generate(cfg), folder / f"s{seed}.jsonl")
        records += read_records("spare", str(path), add_reference=seed % 2 == 0)[0]
    return records


def rec(labels, explanations=None, steps=None, rid="q#0", group="q", **kw) -> StepRecord:
    steps = steps or [f"{i} + 1 = {i + 1}" for i in range(len(labels))]
    return StepRecord(rid, group, Prompt("Start with 0. Add 1.", "Solve."), steps, labels, explanation=explanations, **kw)


# ------------------------------------------------------------------------------ template
@pytest.mark.parametrize("template", [TEMPLATE, CritiqueTemplate(quote_steps=True)], ids=["plain", "quote_steps"])
def test_render_then_parse_is_lossless_on_synthetic_records(synth_records, template):
    assert len(synth_records) > 900
    seen_error = seen_correct = 0
    for r in synth_records:
        _, critique, _ = critique_of(r, template=template)
        text = template.render(critique)
        parsed = template.parse(text, r.num_steps)
        assert parsed.ok, (parsed.error, text)
        assert parsed.critique == critique
        assert template.render(parsed.critique) == text
        if template.quote_steps:
            assert all(line.startswith(f"Step {k}: {s}") for k, (line, s) in enumerate(zip(text.split("\n"), r.steps), 1))
        assert [text[o:].startswith(("correct.", "incorrect.")) for o in parsed.verdict_offsets] == [True] * r.num_steps
        seen_error += critique.first_error >= 0
        seen_correct += critique.first_error < 0
    assert seen_error > 100 and seen_correct > 100


def _random_explanation(rng: random.Random) -> str:
    words = ["Verdict:", "correct.", "Step 2:", "x", "12 - 2 = 10", "incorrect", "Conclusion:", "é", "!", "?", "  ", "\n", "\t"]
    return "".join(rng.choice(words) + rng.choice([" ", "", "  "]) for _ in range(rng.randint(1, 8)))


def test_render_then_parse_is_lossless_on_random_explanations():
    rng = random.Random(0)
    for _ in range(2000):
        steps = []
        for _ in range(rng.randint(1, 7)):
            text = _random_explanation(rng)
            if clean_explanation(text):
                steps.append(StepCritique(text, rng.random() < 0.6))
        if not steps:
            continue
        critique = Critique(tuple(steps))
        text = TEMPLATE.render(critique)
        parsed = TEMPLATE.parse(text, len(steps))
        assert parsed.ok and parsed.critique == critique, (parsed.error, text)
        assert "\n" not in "".join(s.explanation for s in critique.steps)


def test_explanations_are_normalised():
    assert StepCritique("  a \n b", True).explanation == "a b."
    assert StepCritique("ok?", True).explanation == "ok?"
    with pytest.raises(ValueError):
        StepCritique(" \n ", False)


GOOD = "Step 1: Fine. Verdict: correct.\nStep 2: 2 + 2 is 4, not 5. Verdict: incorrect.\nConclusion: the first incorrect step is step 2."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty critique"),
        (GOOD.replace("Step 2:", "Step 3:"), "steps out of order: expected step 2, got step 3"),
        (GOOD.replace("Verdict: incorrect", "Verdict: wrong"), "verdict 'wrong' is neither"),
        (GOOD.replace("Verdict: correct.", "Verdict: correct"), "line 1 is not '<step>: <explanation> Verdict"),
        (GOOD.replace("step 2.", "step 1."), "does not match the verdicts (step 2 first incorrect)"),
        (GOOD.rsplit("\n", 1)[0], "no conclusion line"),
        (GOOD + "\nmore", "text after the conclusion"),
        (GOOD + "\n", "trailing newline"),
        ("Hello\n" + GOOD, "line 1 is neither step 1 nor the conclusion"),
        ("Conclusion: all steps are correct.", "conclusion before any step critique"),
        ("Step 1: . Verdict: correct.\nConclusion: all steps are correct.", None),  # "." is an explanation
    ],
)
def test_malformed_critiques_report_the_reason(text, reason):
    parsed = TEMPLATE.parse(text, 2)
    if reason is None:
        assert parsed.error == "critique covers 1 steps, the solution has 2"
        return
    assert not parsed.ok and reason in parsed.error, parsed.error
    with pytest.raises(ValueError, match="malformed"):
        _ = parsed.critique


def test_step_count_must_match_and_partial_parses_keep_the_good_prefix():
    assert TEMPLATE.parse(GOOD, 2).ok
    assert "covers 2 steps, the solution has 3" in TEMPLATE.parse(GOOD, 3).error
    assert "more steps than the solution's 1" in TEMPLATE.parse(GOOD, 1).error
    broken = TEMPLATE.parse(GOOD.replace("Verdict: incorrect", "Verdict: wrong"), 2)
    assert [s.correct for s in broken.steps] == [True] and len(broken.verdict_offsets) == 1


def test_template_settings_are_checked_and_used_for_prompts():
    with pytest.raises(ValueError, match="step_prefix"):
        CritiqueTemplate(step_prefix="Step: ")
    t = CritiqueTemplate(step_prefix="[{k}] ")
    p = t.prompt(Prompt("Q?", "Solve.", "ctx"), ["a", "b"], preamble="Let's think.")
    assert p.instruction == "Solve." and p.context == "ctx"
    assert p.question == f"Q?\n\nSolution:\nLet's think.\n[1] a\n[2] b\n\n{t.instruction}"
    c = Critique((StepCritique("ok", True),))
    assert t.parse(t.render(c), 1).critique == c and t.render(c).startswith("[1] ok. Verdict")
    assert "Critique:\n[1] ok. Verdict: correct." in t.refine_prompt(Prompt("Q?"), ["a"], c).question


# ------------------------------------------------------------------------------ views
def test_missing_explanations_are_templated_and_counted():
    report = Report()
    items = critique_records([rec([1.0, 0.0, 0.0], ["Right", None, ""])], report=report)
    (_, critique), = items
    assert [s.explanation for s in critique.steps] == ["Right.", TEMPLATED[False], TEMPLATED[False]]
    assert report.notes["critique_templated_explanations"] == 2


def test_unlabeled_steps_reject_or_truncate():
    r = rec([1.0, 1.0, None, 0.0])
    report = Report()
    assert critique_records([r], "reject", report) == []
    assert report.rejected[0].kind == "unlabeled_step" and report.rejected[0].stage == "critique"
    report = Report()
    ((kept, critique),) = critique_records([r], "truncate", report)
    assert kept.num_steps == 2 and critique.verdicts == [True, True] and report.notes["critique_truncated"] == 1
    with pytest.raises(DataError, match="step 1 has no label"):
        critique_of(rec([None, 1.0]), "truncate")


def test_soft_labels_take_the_threshold():
    _, critique, _ = critique_of(rec([0.7, 0.2]))
    assert critique.verdicts == [True, False] and critique.first_error == 1


def test_refinement_examples_pick_a_correct_target(synth_records):
    for target in ("reference", "candidate"):
        report = Report()
        refs = refinement_examples(synth_records, target, report=report)
        assert refs
        for x in refs:
            assert x.candidate.first_error() >= 0 and x.critique.first_error == x.candidate.first_error()
            assert x.target.group_id == x.candidate.group_id and x.target.id != x.candidate.id
            assert all(y == 1.0 for y in x.target.labels) and x.target.outcome != 0
            if target == "reference":
                assert x.target.is_reference and x.target.steps == x.candidate.reference
            else:
                assert not x.target.is_reference
    # candidate targets are drawn per candidate: the same whatever the record order
    shuffled = list(synth_records)
    random.Random(1).shuffle(shuffled)
    a = {x.candidate.id: x.target.id for x in refinement_examples(synth_records, "candidate")}
    b = {x.candidate.id: x.target.id for x in refinement_examples(shuffled, "candidate")}
    assert a == b


def test_refinement_without_a_target_is_counted():
    bad = rec([1.0, 0.0], rid="q#0")
    report = Report()
    assert refinement_examples([bad], "candidate", report=report) == []
    assert report.notes["refine_no_target"] == 1
    good = rec([1.0, 1.0], rid="q#1", outcome=1)
    (x,) = refinement_examples([bad, good], "candidate")
    assert x.target.id == "q#1"
    (x,) = refinement_examples([rec([0.0], rid="q#0", reference=["0 + 1 = 1"])], "reference")
    assert x.target.steps == ["0 + 1 = 1"] and x.target.is_reference


# ------------------------------------------------------------------------------ reader
def test_critique_reader(tmp_path):
    rows = [
        {"question": "Q1?", "steps": ["a", "b"], "critiques": ["fine", None], "verdicts": ["Correct", "incorrect"],
         "instruction": "Solve.", "reference": "a\nc", "outcome": 0},
        {"id": "x", "question_id": 7, "question": "Q2?", "steps": ["The answer is 3."], "verdicts": [True]},
        {"question": "Q3?", "steps": ["a"], "verdicts": ["maybe"]},
        {"question": "Q4?", "steps": ["a", "b"], "verdicts": [1]},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records, report = read_records("critique", str(path))
    assert [r.labels for r in records] == [[1.0, 0.0], [1.0]]
    a, b = records
    assert a.explanation == ["fine", None] and a.reference == ["a", "c"] and a.prompt.instruction == "Solve."
    assert a.outcome == 0 and a.id == f"{a.group_id}#0" and a.group_id.startswith("q-")
    assert b.id == "x" and b.group_id == "7" and b.answer == "3"
    assert report.rejected_by_kind() == {"bad_label": 1, "label_count_mismatch": 1}
    (_, critique), = critique_records([a], report=Report())
    assert [s.explanation for s in critique.steps] == ["fine.", TEMPLATED[False]]


# ------------------------------------------------------------------------------ label policy
def test_critic_label_policy_filters_relabels_and_agrees(tmp_path):
    records = [rec([1.0, 1.0], rid="a", outcome=1), rec([1.0, 0.0], rid="b"), rec([1.0, 0.0], rid="c"),
               rec([1.0, 1.0], rid="d"), rec([1.0], rid="e"), rec([1.0], rid="r", is_reference=True)]  # fmt: skip
    rows = [
        {"id": "a", "verdicts": ["correct", "correct"], "malformed": None},
        {"id": "b", "verdicts": ["correct", "incorrect"], "malformed": None},
        {"id": "c", "verdicts": ["incorrect", None], "malformed": "step 2: ..."},
        {"id": "e", "verdicts": ["correct", "correct"], "malformed": None},
    ]
    path = tmp_path / "critiques.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))

    def run(mode):
        report = Report()
        kept = apply_policies(records, [{"name": "critic", "path": str(path), "mode": mode}], report)
        return kept, dict(report.rejected_by_kind())

    kept, rejected = run("filter")
    assert [r.id for r in kept] == ["a", "r"]
    assert rejected == {"critic_rejected": 1, "critic_malformed": 1, "critic_missing": 1, "critic_step_mismatch": 1}
    kept, _ = run("relabel")
    assert {r.id: r.labels for r in kept} == {"a": [1.0, 1.0], "b": [1.0, 0.0], "c": [0.0, None], "r": [1.0]}
    kept, rejected = run("agree")
    assert [r.id for r in kept] == ["a", "b", "r"]
    with pytest.raises(ValueError, match="critic mode"):
        apply_policies(records, [{"name": "critic", "path": str(path), "mode": "vote"}])
