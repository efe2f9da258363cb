"""The paths users take, through the ``spare-train`` command: recipe -> fit -> export -> evaluate /
generate, and the package installed outside the checkout."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spare_train.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_no_recipe_stops_by_wall_time():
    """Figures must not depend on machine speed: no recipe carries a max_time cut-off."""
    for path in (ROOT / "recipes").rglob("*.yaml"):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer", {})
        assert "max_time" not in trainer, path


def doc_section(path: Path, heading: str) -> str:
    """The text under ``heading`` (a markdown heading line) up to the next heading of its level or
    above; a ``#`` line inside a fenced code block (a shell comment) is not a heading."""
    text = path.read_text(encoding="utf-8")
    level = len(heading.split(" ")[0])
    body = text[text.index(heading + "\n") + len(heading) :]
    fenced, out = False, []
    for line in body.splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        out.append(line)
    return "".join(out)


def code_blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def commands(section: str) -> list[tuple[list[str], str]]:
    """Each ``spare-train`` command of the section's bash blocks: (argv, its trailing comment)."""
    out = []
    for block in code_blocks(section, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("spare-train "):
                code, _, comment = line.partition("  #")
                out.append((shlex.split(code), comment))
    return out


def walk(section: str, tmp_path: Path, fit_cut: list[str]) -> None:
    """Run the section's commands as written from ``tmp_path`` (a user's fresh folder, with the
    checkout's recipes/ and a short data/synth/test.jsonl), each fit cut to a few steps; GPU ones
    and real SLURM submissions skipped."""
    for argv, comment in commands(section):
        if "GPU" in comment:
            continue
        if argv[1] == "slurm" and "--dry-run" not in argv:  # sbatch needs a cluster: tests/test_slurm.py submits
            continue
        assert argv[0] == "spare-train"
        extra = fit_cut if argv[1] == "fit" else []
        assert main([*argv[1:], *extra]) == 0, argv
        if "wandb" in sys.modules:  # a fit with the wandb logger leaves its run (and wandb's settings,
            import wandb  # this folder included) until the process ends; a later test would inherit them

            wandb.finish()
            wandb.teardown()


def user_folder(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    (tmp_path / "data" / "synth").mkdir(parents=True)
    lines = (ROOT / "data" / "synth" / "test.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "data" / "synth" / "test.jsonl").write_text("".join(lines[:40]), encoding="utf-8")  # 10 questions
    return tmp_path


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_readme_prm_walk_runs_as_written(tmp_path, monkeypatch, capfd):
    """README, "Training a PRM": fit (twice), export, score, evaluate and the Python call, as written
    (fits cut to 3 steps, the 8B GPU run skipped), with progress lines and no third-party tips."""
    folder = user_folder(tmp_path, monkeypatch)
    monkeypatch.setenv("SPARE_TRAIN_PROGRESS_EVERY", "0")
    section = doc_section(ROOT / "README.md", "## Training a PRM")
    walk(section, folder, ["--trainer.max_steps=3", "--trainer.limit_val_batches=2", "--trainer.val_check_interval=3"])
    assert (folder / "runs/prm-tiny/lightning_logs/version_1/checkpoints/last.ckpt").is_file()  # the second fit
    info = json.loads((folder / "prm-out" / "spare_prm.json").read_text())
    assert info["format"]["max_length"] == 256 and info["format"]["step_tag"] == " ки"  # linked from data
    rows = [json.loads(x) for x in (folder / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(len(r["step_scores"]) > 0 for r in rows)
    err = capfd.readouterr().err
    assert "training: 3 optimizer steps" in err and "epoch 1/1  step 3/3 (100%)" in err  # lines in a log
    assert "💡 Tip" not in err and "args parameter" not in err and "tensorboardX" not in err
    [snippet] = code_blocks(section, "python")
    printed = run_python(snippet, folder).stdout.splitlines()
    assert len(json.loads(printed[0])) == 1 and len(json.loads(printed[0])[0]) == 2  # one record, two steps


@pytest.mark.slow
def test_offline_rl_doc_walk_runs_as_written(tmp_path, monkeypatch):
    """docs/offline_rl.md, "From fit to a generating policy": its commands, then its Python, as
    written (the fit cut to 2 steps): the checkpoint is where the doc says and the policy generates."""
    folder = user_folder(tmp_path, monkeypatch)
    section = doc_section(ROOT / "docs" / "offline_rl.md", "## From fit to a generating policy")
    walk(section, folder, ["--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2"])
    [snippet] = code_blocks(section, "python")
    assert run_python(snippet, folder).stdout.strip()  # the greedy answer to the documented prompt


@pytest.mark.slow
def test_installed_package_runs_outside_the_checkout(tmp_path):
    """A wheel installed elsewhere carries its recipes and bundled data: `--help`, the data demo
    and a recipe (by its bundled: name) work from an unrelated folder."""
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target",
         str(target), str(ROOT)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "spare_train" / "recipes" / "prm" / "tiny.yaml").is_file()
    assert (target / "spare_train" / "launch" / "templates" / "sweep-trial.sh").is_file()
    assert (target / "spare_train" / "assets" / "synth" / "train.jsonl").is_file()
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = run("-c", "import spare_train; print(spare_train.__file__)")
    assert where.stdout.strip().startswith(str(target))
    assert run("-m", "spare_train.cli", "--help").returncode == 0
    demo = run("-m", "spare_train.demo", "--data-only", "--out", str(work / "out"))
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "read 5600  kept 5600" in demo.stderr
    fit = run("-m", "spare_train.cli", "fit", "--config", "bundled:recipes/prm/tiny.yaml", "--print_config")
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert yaml.safe_load(fit.stdout)["data"]["init_args"]["train"] == "bundled:synth/train.jsonl"
