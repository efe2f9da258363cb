"""``spare-train evaluate`` with fake scores and a fake reader / PRM: no model is loaded."""

from __future__ import annotations

import io
import json
import math
import sys
import types

import pytest
from rich.console import Console

from spare_train.evaluate import evaluate_scores, format_table, main
from spare_train.records import Prompt, StepRecord
from spare_train.report import Report


def _rec(rid, group, labels, outcome, answer):
    steps = [f"step {i}" for i in range(len(labels))]
    return StepRecord(rid, group, Prompt("q?"), steps, labels, outcome=outcome, answer=answer)


RECORDS = [
    _rec("r1", "q1", [1.0, 1.0, 0.0], 0, "5"),
    _rec("r2", "q1", [1.0, 1.0], 1, "6"),
    _rec("r3", "q1", [1.0, None], 1, "6"),  # first error unknown
    _rec("r4", "q2", [0.0, None], 0, "3"),
    _rec("r5", "q2", [None], None, None),  # unlabeled, outcome unknown: only scored
]
SCORES = [[0.9, 0.8, 0.2], [0.7, 0.6], [0.4, 0.9], [0.6, 0.3], [0.5]]


def test_evaluate_scores_hand_computed():
    m = evaluate_scores(RECORDS, SCORES, tau=0.5)
    # labeled steps (score, label): .9 1, .8 1, .2 0, .7 1, .6 1, .4 1, .6 0
    assert m["step/num_steps"] == 7
    assert m["step/acc"] == pytest.approx(5 / 7)  # .4 (label 1) and the second .6 (label 0) wrong
    assert m["step/f1"] == pytest.approx(0.8)  # TP 4, FP 1, FN 1
    assert m["step/f1_error"] == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    assert m["step/auroc"] == pytest.approx(0.85)  # (5 + 3 + a tie's 0.5) / 10 pairs
    # first error, known for r1 (2), r2 (-1), r4 (0); predicted 2, -1, 1
    assert m["first_error/acc_error"] == pytest.approx(1 / 2)
    assert m["first_error/acc_correct"] == 1.0
    assert m["first_error/f1"] == pytest.approx(2 / 3)
    assert (m["first_error/num_error"], m["first_error/num_correct"]) == (2, 1)
    assert m["first_error/tau_chosen"] == 0.0
    # best-of-N without r5: q1 picks r2 (min .6) ✓, q2 has only r4 ✗
    assert m["bon/min"] == 0.5 and m["bon/oracle"] == 0.5
    assert m["bon/random"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["vote/majority"] == 0.5  # q1 "6" two votes ✓, q2 "3" ✗
    assert m["bon/num_questions"] == 2


def test_evaluate_scores_chooses_tau_when_not_given():
    # F1 is 2/3 for every tau in (0.2, 0.6]: 0.21 … 0.60 on the grid, lower median 0.40
    m = evaluate_scores(RECORDS, SCORES)
    assert m["first_error/tau_chosen"] == 1.0
    assert m["first_error/tau"] == pytest.approx(0.4)
    assert m["first_error/f1"] == pytest.approx(2 / 3)


def test_evaluate_scores_rejects_misaligned_scores():
    with pytest.raises(ValueError, match="r1"):
        evaluate_scores(RECORDS, [[0.5]] + SCORES[1:])
    with pytest.raises(ValueError):
        evaluate_scores(RECORDS, SCORES[:-1])


def _render(table) -> str:
    console = Console(file=io.StringIO(), width=140)
    console.print(table)
    return console.file.getvalue()


def test_format_table():
    text = _render(format_table(evaluate_scores(RECORDS, SCORES)))
    assert "first-error F1" in text and "66.7" in text
    assert "0.400 (chosen on data)" not in text  # value and title are in different columns
    assert "tau (chosen on data)" in text and "optimistic" in text
    assert "PRM-weighted vote, min" in text and "best-of-N, prod" in text
    text = _render(format_table({"step/auroc": math.nan, "step/num_steps": 3.0, "first_error/tau": 0.5,
                                 "first_error/tau_chosen": 0.0}))
    assert "–" in text and "optimistic" not in text and "0.500" in text


@pytest.fixture
def fake_backends(monkeypatch):
    calls = {}

    def read_records(fmt, paths, strict=False, **options):
        calls["read"] = (fmt, paths, strict)
        report = Report()
        report.count_read(len(RECORDS))
        return list(RECORDS), report

    class FakePRM:
        def score(self, records, batch_size=8):
            calls["batch_size"] = batch_size
            return [list(s) for s in SCORES]

    monkeypatch.setitem(sys.modules, "spare_train.formats", types.SimpleNamespace(read_records=read_records))
    monkeypatch.setitem(sys.modules, "spare_train.scoring", types.SimpleNamespace(load_prm=lambda d: FakePRM()))
    return calls


def test_main_writes_json(fake_backends, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["--model", "m", "--data", "d.jsonl", "--format", "spare", "--tau", "0.5",
            "--batch_size", "4", "--output", str(out)]
    assert main(argv) == 0
    assert fake_backends == {"read": ("spare", "d.jsonl", False), "batch_size": 4}
    result = json.loads(out.read_text())
    assert result["metrics"]["first_error/f1"] == pytest.approx(2 / 3)
    assert result["read"]["kept"] == 5
    assert "first-error F1" in capsys.readouterr().out


def test_main_help_documents_options(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--tau" in text and "First-error threshold" in text and "--output" in text
