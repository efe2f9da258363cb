"""`spare-train data convert | prepare | synth` and the dispatcher, run as a user would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from spare_train.cli import main

SHARED = Path(os.environ.get("SPARE_TRAIN_SHARED", Path(__file__).resolve().parents[2] / "shared"))
GSM8K = SHARED / "data" / "gsm8k" / "model_solutions.jsonl"


def test_every_command_parses_its_typed_signature(capsys):
    """One spelling everywhere: underscores, bare boolean flags, help from the docstrings."""
    for command in (["data", "convert"], ["data", "prepare"], ["data", "synth"], ["evaluate"], ["export"], ["score"]):
        with pytest.raises(SystemExit) as exit_:
            main([*command, "--help"])
        assert exit_.value.code == 0
        text = capsys.readouterr().out
        assert "usage: spare-train " + " ".join(command) in text
    with pytest.raises(SystemExit):
        main(["data", "convert", "--help"])
    text = capsys.readouterr().out
    assert "--reader_options" in text and "--strict, --no_strict" in text and "reader name" in text


def test_synth_then_convert_round_trip(tmp_path, capsys):
    raw, out, rep = tmp_path / "s.jsonl", tmp_path / "c.jsonl", tmp_path / "r.json"
    assert main(["data", "synth", "--num_questions", "5", "--seed", "7", "--output", str(raw)]) == 0
    assert len(raw.read_text().splitlines()) == 20
    assert main(["data", "convert", "--format", "spare", "--input", str(raw), "--output", str(out),
                 "--report", str(rep)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 20 and {"id", "group_id", "prompt", "steps", "labels", "outcome"} <= set(rows[0])
    assert [r["id"] for r in rows[:4]] == [f"{rows[0]['group_id']}#{k}" for k in range(4)]  # input order
    report = json.loads(rep.read_text())
    assert report["read"] == report["kept"] + report["rejected"] == 20
    assert "read 20  kept 20" in capsys.readouterr().err


def test_convert_rejects_and_reports_bad_lines_and_strict_stops(tmp_path, capsys):
    raw = tmp_path / "s.jsonl"
    main(["data", "synth", "--num_questions", "2", "--output", str(raw)])
    with raw.open("a") as f:
        f.write("{not json\n")
    rep = tmp_path / "r.json"
    assert main(["data", "convert", "--format", "spare", "--input", str(raw), "--output",
                 str(tmp_path / "o.jsonl"), "--report", str(rep)]) == 0
    report = json.loads(rep.read_text())
    assert report["read"] == 9 and report["kept"] == 8 and report["rejected_by_kind"] == {"invalid_json": 1}
    assert report["rejections"][0]["where"].endswith("s.jsonl:9")
    capsys.readouterr()
    assert main(["data", "convert", "--format", "spare", "--input", str(raw), "--output",
                 str(tmp_path / "o2.jsonl"), "--strict"]) == 1
    assert "s.jsonl:9: invalid_json" in capsys.readouterr().err


@pytest.mark.skipif(not GSM8K.exists(), reason="../shared is absent")
def test_convert_whole_shared_gsm8k_file(tmp_path):
    out, rep = tmp_path / "g.jsonl", tmp_path / "r.json"
    assert main(["data", "convert", "--format", "gsm8k_solutions", "--input", str(GSM8K), "--output", str(out),
                 "--report", str(rep)]) == 0
    report = json.loads(rep.read_text())
    assert report["read"] == report["kept"] + report["rejected"] == 5000
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == report["kept"]
    model = [r for r in rows if not r["is_reference"]]
    assert len(model) == 4000 and 0.3 < sum(r["outcome"] for r in model) / 4000 < 0.45


def test_prepare_writes_splits_report_and_shows_examples(tmp_path, capsys):
    raw = tmp_path / "s.jsonl"
    main(["data", "synth", "--num_questions", "20", "--output", str(raw)])
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(
        "model:\n  class_path: spare_train.prm.PRMModule\n"
        f"data:\n  class_path: spare_train.data.PRMDataModule\n  init_args:\n    train: {raw}\n"
        "    tokenizer: tiny\n    val_fraction: 0.25\n    label_policy: [first_error]\n"
    )
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "--config", str(cfg), "--output", str(out), "--show", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["read"] == 80 == report["kept"]
    from datasets import load_from_disk

    assert len(load_from_disk(str(out / "train"))) + len(load_from_disk(str(out / "val"))) == 80
    printed = capsys.readouterr().out
    assert "── example" in printed and "⟨1⟩" in printed


def test_unknown_command_and_help(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err
    assert main([]) == 0 and "convert | prepare | synth" in capsys.readouterr().out
