"""The paths users take, through the ``spare-train`` command: recipe -> fit -> export -> evaluate /
generate, and the package installed outside the checkout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spare_train.cli import main

ROOT = Path(__file__).resolve().parents[1]


def last_checkpoint(run_dir: Path) -> Path:
    found = sorted(run_dir.rglob("last.ckpt"))
    assert found, f"no last.ckpt under {run_dir}"
    return found[0]


def test_no_recipe_stops_by_wall_time():
    """Figures must not depend on machine speed: no recipe carries a max_time cut-off."""
    for path in (ROOT / "recipes").rglob("*.yaml"):
        trainer = (yaml.safe_load(path.read_text()) or {}).get("trainer", {})
        assert "max_time" not in trainer, path


@pytest.mark.slow
def test_prm_recipe_fit_export_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["fit", "--config", "recipes/prm/tiny.yaml", "--trainer.max_steps=3", "--trainer.limit_val_batches=2",
                 f"--trainer.default_root_dir={run}"]) == 0  # fmt: skip
    ckpt = last_checkpoint(run)
    assert ckpt.is_relative_to(run)  # checkpoints land where default_root_dir says
    assert main(["export", str(ckpt), str(tmp_path / "prm")]) == 0
    info = json.loads((tmp_path / "prm" / "spare_prm.json").read_text())
    assert info["format"]["max_length"] == 256 and info["format"]["step_tag"] == " ки"  # linked from data
    out = tmp_path / "m.json"
    assert main(["evaluate", "--model", str(tmp_path / "prm"), "--data", "bundled:synth/test.jsonl",
                 "--tau", "0.5", "--output", str(out)]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["bon/num_questions"] == 200 and metrics["step/num_unscored"] == 0
    assert 0.0 <= metrics["step/auroc"] <= 1.0


@pytest.mark.slow
def test_policy_recipe_fit_export_generate(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path / "run"
    assert main(["fit", "--config", "recipes/offline_rl/tiny-dpo.yaml", "--trainer.max_steps=2",
                 "--trainer.limit_val_batches=1", "--trainer.val_check_interval=2",
                 f"--trainer.default_root_dir={run}"]) == 0  # fmt: skip
    ckpt = last_checkpoint(run)
    assert main(["export", str(ckpt), str(tmp_path / "policy")]) == 0
    tok = AutoTokenizer.from_pretrained(tmp_path / "policy")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    messages = [{"role": "system", "content": "Solve the problem step by step."},
                {"role": "user", "content": "Start with 3. Add 2. What is the result?"}]  # fmt: skip
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


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
