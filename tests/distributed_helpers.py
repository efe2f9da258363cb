"""Running ``spare-train fit`` in subprocesses for the multi-process and fault tests.

Never ``strategy=ddp`` inside the pytest process: Lightning re-executes the command line, which
would be pytest. Each run is ``python -m spare_train.cli fit …`` with one thread per process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
#: ``gpu`` runs the same tests on GPUs (NCCL; see docs/distributed.md for the command); CI runs ``cpu`` (gloo)
ACCELERATOR = os.environ.get("SPARE_TRAIN_TEST_ACCELERATOR", "cpu")


def small_spare_file(path: Path, n: int) -> Path:
    """The first ``n`` records of the bundled synthetic training data."""
    lines = (ROOT / "data" / "synth" / "train.jsonl").read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def fit_command(recipe: str, run: Path, *args: str, devices: int = 1, strategy: str | None = None) -> list[str]:
    cmd = [sys.executable, "-m", "spare_train.cli", "fit", "--config", str(ROOT / "recipes" / recipe)]
    if strategy:
        cmd += ["--config", str(ROOT / "recipes" / "strategies" / f"{strategy}.yaml")]
        if strategy == "fsdp2":  # fp32 compute, so that it can equal one process to float rounding
            cmd += ["--trainer.strategy.init_args.param_dtype=null"]
    cmd += [f"--trainer.accelerator={ACCELERATOR}", f"--trainer.devices={devices}"]
    return cmd + [f"--trainer.default_root_dir={run}", *QUIET, *args]


def fit(recipe: str, run: Path, *args: str, devices: int = 1, strategy: str | None = None, timeout: int = 900,
        expect: int = 0) -> subprocess.CompletedProcess:  # fmt: skip
    proc = subprocess.run(fit_command(recipe, run, *args, devices=devices, strategy=strategy), env=ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stderr[-6000:]}"
    return proc


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so a kill reaches every rank), output to ``log``."""
    out = open(log, "w")
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(path_glob: tuple[Path, str], proc: subprocess.Popen, timeout: float = 900) -> Path:
    """Wait until a file matching ``folder.glob(pattern)`` exists (the run must still be going)."""
    folder, pattern = path_glob
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(folder.rglob(pattern)) if folder.exists() else []
        if found:
            return found[0]
        assert proc.poll() is None, f"run ended (exit {proc.returncode}) before {pattern} appeared"
        time.sleep(0.2)
    raise TimeoutError(pattern)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)


def final_checkpoint(run: Path) -> Path:
    """The newest ``last.ckpt`` (file or sharded folder) of a run."""
    from spare_train.models.checkpoint import find_last_checkpoint

    found = find_last_checkpoint(run)
    assert found, f"no last.ckpt under {run}"
    return Path(found)


def load(path: Path) -> dict:
    from spare_train.models.hf import load_checkpoint

    return load_checkpoint(path)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))[:5]
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
