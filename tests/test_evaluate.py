"""``spare-train evaluate``: metrics of records and scores by hand, and the command on a real export."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import pytest
from rich.console import Console

from spare_train.cli import main
from spare_train.prm.evaluate import _jsonable, evaluate_scores, format_table
from spare_train.records import Prompt, StepRecord


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


@pytest.mark.slow
def test_evaluate_command_on_an_export_with_a_small_max_length(tmp_path, capsys):
    """spare-train evaluate counts only scored steps: an export whose max_length cuts trailing
    steps reports them as unscored, and `score`, `evaluate` and the metric functions agree."""
    from test_backbone import tiny_folder

    from spare_train.cli import main
    from spare_train.formats import read_records
    from spare_train.models.backbone import BackboneConfig
    from spare_train.prm import PRMModule, load_prm
    from spare_train.prm.export import export_module
    from spare_train.synth import SynthConfig, generate, write_jsonl
    from spare_train.tokenize import FormatConfig

    data = write_jsonl(generate(SynthConfig(num_questions=12, seed=2)), tmp_path / "d.jsonl")
    module = PRMModule(backbone=BackboneConfig(name_or_path=tiny_folder(tmp_path / "base")),
                       prompt_format=FormatConfig(max_length=96))  # fmt: skip
    module.configure_model()
    export = export_module(module, tmp_path / "prm")
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(export), "--data", str(data), "--tau", "0.5", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    records, _ = read_records("spare", str(data))
    scores = load_prm(export).score(records)
    unscored = sum(x is None for s in scores for x in s)
    labeled_scored = sum(x is not None for s in scores for x in s)
    assert unscored > 0, "max_length=96 should cut trailing steps"
    assert metrics["step/num_unscored"] == unscored and metrics["step/num_steps"] == labeled_scored
    assert metrics == pytest.approx(json.loads(json.dumps(_jsonable(evaluate_scores(records, scores, tau=0.5)))),
                                    nan_ok=True)  # fmt: skip
    assert main(["score", "--model", str(export), "--input", str(data), "--output", str(tmp_path / "s.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert sum(x is None for r in rows for x in r["step_scores"]) == unscored


def test_references_are_left_out_of_ranking_by_default():
    ref = StepRecord("q2#ref", "q2", Prompt("q?"), ["gold"], [None], outcome=1, answer="4", is_reference=True)
    m = evaluate_scores([*RECORDS, ref], [*SCORES, [0.99]], tau=0.5)
    assert m["bon/min"] == 0.5 and m["bon/oracle"] == 0.5  # as without the reference
    with_ref = evaluate_scores([*RECORDS, ref], [*SCORES, [0.99]], tau=0.5, include_references=True)
    assert with_ref["bon/min"] == 1.0 and with_ref["bon/oracle"] == 1.0  # the gold answer wins q2


SHARED = Path(os.environ.get("SPARE_TRAIN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GSM8K = SHARED / "data" / "gsm8k" / "model_solutions.jsonl"


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K.exists(), reason="../shared/data/gsm8k is absent (or set SPARE_TRAIN_SHARED)")
def test_gsm8k_oracle_counts_model_solutions_only(tmp_path):
    """`spare-train evaluate` on GSM8K's model solutions: the gold reference is read (the reader
    adds it) but not ranked, so the oracle is the share of questions a model solved."""
    from test_scoring import untrained_export

    rows = GSM8K.read_text(encoding="utf-8").splitlines()[:40]
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    keys = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
    solved = sum(any(json.loads(r)[k]["is_correct"] for k in keys) for r in rows) / len(rows)
    assert 0.3 < solved < 1.0
    model = untrained_export(tmp_path / "prm")
    oracle = {}
    for flag in ([], ["--include_references"]):
        out = tmp_path / f"m{len(flag)}.json"
        assert main(["evaluate", "--model", str(model), "--data", str(data), "--format", "gsm8k_solutions",
                     "--tau", "0.5", "--output", str(out), *flag]) == 0  # fmt: skip
        metrics = json.loads(out.read_text())["metrics"]
        assert metrics["bon/num_questions"] == len(rows)
        oracle[bool(flag)] = metrics["bon/oracle"]
    assert oracle[False] == pytest.approx(solved) and oracle[True] == 1.0
def test_format_table_puts_models_side_by_side():
    prm = evaluate_scores(RECORDS, SCORES, tau=0.5)
    critic = {**evaluate_scores(RECORDS, [[1 - x for x in s] for s in SCORES], tau=0.5), "critique/parse_rate": 0.75}
    text = _render(format_table({"PRM": prm, "critic": critic}))
    header = next(line for line in text.splitlines() if "metric" in line)
    assert "PRM" in header and "critic" in header
    row = next(line for line in text.splitlines() if "critiques that parse" in line)
    assert "75.0" in row
    auroc = next(line for line in text.splitlines() if "step AUROC" in line)
    assert f"{100 * prm['step/auroc']:.1f}" in auroc and f"{100 * critic['step/auroc']:.1f}" in auroc
