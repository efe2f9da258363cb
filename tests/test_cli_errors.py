"""A user's mistake ends a `spare-train` command with one `error: …` line and a non-zero exit,
never a traceback (issue 10, item 4). Every case runs through the command as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spare_train.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = str(ROOT / "data" / "synth" / "test.jsonl")


def one_error_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines and lines[0].startswith("error: "), err[-2000:]
    assert len(lines) <= 2, err  # the error, and for a parser error a pointer to --help
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def fake_prm(tmp_path) -> Path:
    """A folder that passes the exported-PRM check (its spare_prm.json), for errors raised before loading."""
    folder = tmp_path / "prm"
    folder.mkdir()
    (folder / "spare_prm.json").write_text("{}")
    return folder


@pytest.mark.parametrize("command", ["convert", "score", "evaluate"])
def test_wrong_format_and_reader_option(command, tmp_path, fake_prm, capsys):
    args = {"convert": ["data", "convert", "--input", DATA, "--output", str(tmp_path / "o.jsonl")],
            "score": ["score", "--model", str(fake_prm), "--input", DATA, "--output", str(tmp_path / "o.jsonl")],
            "evaluate": ["evaluate", "--model", str(fake_prm), "--data", DATA]}[command]  # fmt: skip
    assert main([*args, "--format", "spare_v2"]) == 1
    one_error_line(capsys, "--format", "'spare_v2' is not a reader", "math_shepherd")
    assert main([*args, "--format", "spare", "--reader_options", '{"add_refs": true}']) == 1
    one_error_line(capsys, "--reader_options", "add_refs", "add_reference")
    assert not (tmp_path / "o.jsonl").exists()


def test_wrong_config_path(capsys):
    assert main(["fit", "--config", "recipes/prm/nope.yaml"]) == 1
    one_error_line(capsys, "--config", "recipes/prm/nope.yaml")
    assert main(["data", "prepare", "--config", "nope.yaml"]) == 1
    one_error_line(capsys, "nope.yaml")


def test_wrong_format_in_a_recipe_override(capsys):
    assert main(["fit", "--config", "recipes/prm/tiny.yaml", "--data.init_args.format=prm_800k"]) == 1
    one_error_line(capsys, "--data.init_args.format", "prm_800k")


def test_parser_errors_are_one_line_and_point_to_help(capsys):
    assert main(["score", "--modle", "x"]) == 2
    line = one_error_line(capsys, "--modle")
    assert main(["export"]) == 2
    one_error_line(capsys, "ckpt")
    assert line


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_score_and_evaluate_need_an_exported_prm_and_an_input(command, tmp_path, fake_prm, capsys):
    out = ["--output", str(tmp_path / "o.jsonl")] if command == "score" else []
    key = "--input" if command == "score" else "--data"
    assert main([command, "--model", str(tmp_path / "nothere"), key, DATA, *out]) == 1
    one_error_line(capsys, "not_a_prm", "no such folder")
    assert main([command, "--model", str(ROOT / "recipes"), key, DATA, *out]) == 1  # a folder, not an export
    one_error_line(capsys, "not_a_prm", "spare_prm.json", "spare-train export")
    assert main([command, "--model", str(fake_prm), key, str(tmp_path / "missing.jsonl"), *out]) == 1
    one_error_line(capsys, "missing_path", "missing.jsonl")


def test_export_of_something_that_is_not_a_checkpoint(tmp_path, capsys):
    from safetensors.torch import save_file
    import torch

    out = str(tmp_path / "out")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    run = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    run.mkdir(parents=True)
    (run / "last.ckpt").write_bytes(b"")
    cases = {
        "notes.ckpt": ("not_a_checkpoint", "torch cannot read it"),  # torch: UnpicklingError / KeyError
        "model.safetensors": ("not_a_checkpoint", "safetensors"),
        "weights.pt": ("not_a_checkpoint", "without a state_dict"),
        "run": ("not_a_checkpoint", "a folder", "last.ckpt"),  # names the checkpoints inside
        "missing.ckpt": ("missing_checkpoint", "runs/<recipe>/lightning_logs"),
    }
    for name, words in cases.items():
        assert main(["export", str(tmp_path / name), out]) == 1, name
        one_error_line(capsys, *words)
        assert "weights_only=False" not in capsys.readouterr().err
    assert not Path(out).exists()


def test_a_reader_that_rejects_everything_shows_the_first_reasons(tmp_path, capsys):
    """The wrong reader for a file rejects every row; the command shows why, row by row."""
    main(["data", "convert", "--format", "prm800k", "--input", DATA, "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert "read 800  kept 0  rejected 800" in err
    assert f"{DATA}:1: wrong_type" in err and f"{DATA}:2: wrong_type" in err and "Traceback" not in err


def test_data_errors_keep_their_location(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "completions": ["a"], "labels": [True]}) + "\n{oops\n")
    assert main(["data", "convert", "--format", "stepwise", "--input", str(bad), "--output",
                 str(tmp_path / "o.jsonl"), "--strict"]) == 1  # fmt: skip
    one_error_line(capsys, f"{bad}:2", "invalid_json")


@pytest.mark.parametrize("option, words", [
    ("--model.init_args.objective=nope", ["unknown objective 'nope'", "sft"]),
    ("--model.init_args.objective=SFT --model.init_args.objective.init_args.focal_gamma=-1", ["focal_gamma must be >= 0"]),
])  # fmt: skip
def test_a_value_a_constructor_rejects_is_one_error_line(option, words, tmp_path):
    """Checked when the recipe's classes are built, not when it is parsed: jsonargparse used to
    print every union member it tried, with tracebacks. (A subprocess: Lightning's logger keeps
    the stream of the first test that ran it.)"""
    args = ["fit", "--config", str(ROOT / "recipes" / "critique" / "tiny.yaml"), *option.split(),
            "--trainer.max_steps=1", f"--trainer.default_root_dir={tmp_path}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "spare_train.cli", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.endswith("Seed set to 0")]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: invalid_option: ") and all(w in lines[0] for w in words), lines[0]
