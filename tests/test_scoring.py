"""load_prm / PRM.score / `spare-train score`: order, truncation, aggregation, safetensors only."""

from __future__ import annotations

import json
import math

import pytest
from test_backbone import tiny_folder
from test_prm import records

from spare_train.models.backbone import BackboneConfig
from spare_train.cli import main as cli
from spare_train.prm.export import export_module
from spare_train.prm import PRMModule
from spare_train.prm.scoring import load_prm


def untrained_export(out, max_length: int | None = None):
    """A random tiny PRM exported to ``out`` (the scores mean nothing; the paths are real)."""
    base = tiny_folder(out.parent / f"{out.name}-base")
    module = PRMModule(backbone=BackboneConfig(name_or_path=base))
    if max_length:
        module.format_config.max_length = max_length
    module.configure_model()
    return export_module(module, out)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return untrained_export(tmp_path_factory.mktemp("prm") / "prm", max_length=60)  # the longest record loses steps


def stepwise_file(path, recs):
    with open(path, "w") as f:
        for r in recs:
            row = {"id": r.id, "prompt": r.prompt.question, "completions": r.steps, "labels": r.labels}
            f.write(json.dumps(row) + "\n")
    return path


def test_score_keeps_order_and_marks_truncated_steps(exported):
    prm = load_prm(exported)
    recs = records(4)
    scores = prm.score(recs, batch_size=3)
    assert [len(s) for s in scores] == [len(r.steps) for r in recs]
    truncated = [s for s in scores if None in s]
    assert truncated, "max_length=60 should cut a step somewhere"
    for row in truncated:  # whole trailing steps are unscored (None), never a middle one
        first = row.index(None)
        assert all(x is None for x in row[first:]) and all(isinstance(x, float) for x in row[:first])
    # batch size and order do not change scores
    again = prm.score(list(reversed(recs)), batch_size=1)[::-1]
    for a, b in zip(scores, again):
        assert [x is None for x in a] == [x is None for x in b]
        assert [x for x in a if x is not None] == pytest.approx([x for x in b if x is not None], abs=1e-5)
    r = recs[0]
    got = prm.score_text(r.prompt.question, r.steps, r.prompt.instruction)
    assert [x for x in got if x is not None] == pytest.approx([x for x in scores[0] if x is not None], abs=1e-5)


@pytest.mark.parametrize("how", ["min", "prod", "last", "mean"])
def test_score_command_writes_jsonl_in_input_order(exported, tmp_path, how):
    recs = records(4)
    src = stepwise_file(tmp_path / "in.jsonl", recs)
    out = tmp_path / "scores.jsonl"
    assert cli(["score", "--model", str(exported), "--input", str(src), "--format", "stepwise",
                "--output", str(out), "--aggregate", how]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r.id for r in recs]
    for row in rows:
        kept = [x for x in row["step_scores"] if x is not None]
        want = {"min": min(kept), "prod": math.prod(kept), "last": kept[-1], "mean": sum(kept) / len(kept)}[how]
        assert row["score"] == pytest.approx(want)


def test_pickled_weights_are_refused(exported, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    shutil.copytree(exported, tmp_path / "p")
    state = load_file(tmp_path / "p" / "model.safetensors")
    (tmp_path / "p" / "model.safetensors").unlink()
    torch.save(state, tmp_path / "p" / "pytorch_model.bin")  # a pickle: never loaded
    with pytest.raises(OSError):
        load_prm(tmp_path / "p")


def test_score_takes_records_dicts_or_a_path_and_says_what_else(exported, tmp_path):
    """`load_prm(...).score(records)` as documented: StepRecords, dicts, or a file read with a reader."""
    from dataclasses import replace

    from spare_train.records import Prompt

    prm = load_prm(exported)
    recs = [replace(r, prompt=Prompt(r.prompt.question)) for r in records(4)]  # as the stepwise file holds them
    want = prm.score(recs)
    as_dicts = [r.to_dict() for r in recs]
    short = [{"question": r.prompt.question, "instruction": r.prompt.instruction, "steps": r.steps} for r in recs]
    path = stepwise_file(tmp_path / "in.jsonl", recs)
    for got in (prm.score(as_dicts), prm.score(short), prm.score(str(path), format="stepwise"), prm.score(path, format="stepwise")):
        assert [[x is None for x in row] for row in got] == [[x is None for x in row] for row in want]
        for g, w in zip(got, want):
            assert [x for x in g if x is not None] == pytest.approx([x for x in w if x is not None], abs=1e-5)
    for wrong, words in ((recs[0], "got StepRecord"), ([{"text": "2 + 2"}], r"records\[0\] must be"), ([("q", ["s"])], "tuple"), (3, "int")):
        with pytest.raises(TypeError, match=words):
            prm.score(wrong)


def test_score_with_the_wrong_reader_shows_the_first_reasons(exported, tmp_path, capsys):
    src = stepwise_file(tmp_path / "in.jsonl", records(4))
    cli(["score", "--model", str(exported), "--input", str(src), "--format", "math_shepherd",
         "--output", str(tmp_path / "s.jsonl")])  # fmt: skip
    err = capsys.readouterr().err
    assert "read 4  kept 0  rejected 4" in err and f"{src}:1:" in err and "Traceback" not in err
def test_scoring_a_merged_export_does_not_import_peft(exported, tmp_path):
    """peft (and bitsandbytes behind it) cost seconds at start-up; a merged PRM never needs them."""
    import subprocess
    import sys

    code = (f"import sys; from spare_train.prm.scoring import load_prm; prm = load_prm({str(exported)!r}); "
            "print(prm.score_text('What is 2 + 3?', ['2 + 3 = 5', 'The answer is 5.'])); "
            "assert 'peft' not in sys.modules, 'peft was imported'")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
