"""``spare-train slurm submit`` and the ``slurm/`` templates.

The first tests need no SLURM. The others run against a real one-node SLURM cluster on 127.0.0.1
(:mod:`slurm_cluster`): a 2-task DDP job of the tiny PRM recipe (CPU tasks, gloo) that completes
with a checkpoint, the same job preempted by SLURM's warning signal that requeues itself, resumes
from its checkpoint and finishes, and a recipe that asks for more devices than the job allocates,
refused before ``sbatch``. They skip, saying why, where SLURM is not installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from spare_train.assets import resolve_bundled
from spare_train.cli import main
from spare_train.launch.slurm import Allocation, SubmitError, check_allocation, devices_per_node, split_fit_args
from spare_train.models.hf import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "prm" / "tiny.yaml")
TEMPLATES = sorted((ROOT / "slurm").glob("*.sbatch"))


# ---- without SLURM ----------------------------------------------------------------------------------
def test_slurm_folder_holds_the_three_templates():
    assert {p.name for p in TEMPLATES} == {"one-node.sbatch", "multi-node.sbatch", "sweep-agents.sbatch"}
    for path in TEMPLATES:
        text = path.read_text()
        for line in ("--ntasks-per-node={{tasks_per_node}}", "--signal=SIGUSR1@90", "--requeue", "srun "):
            assert line in text, (path.name, line)


@pytest.mark.parametrize(
    "trainer, gpus, expected",
    [({"devices": 4}, 4, 4), ({"devices": "auto", "accelerator": "gpu"}, 8, 8), ({"devices": -1}, 2, 2),
     ({"devices": [0, 1]}, 4, 2), ({"devices": "0,1,2"}, 4, 3), ({"devices": "auto", "accelerator": "cpu"}, 0, 1)],
)  # fmt: skip
def test_devices_per_node(trainer, gpus, expected):
    assert devices_per_node(trainer, gpus) == expected


def test_check_allocation_names_each_mismatch_and_the_fix():
    check_allocation({"accelerator": "gpu", "devices": 4, "num_nodes": 2}, Allocation(2, 4, 4))
    with pytest.raises(SubmitError, match=r"runs 1 device\(s\) per node .* starts 4 task\(s\).*--trainer.devices=4`"):
        check_allocation({"accelerator": "gpu", "devices": 1, "num_nodes": 2}, Allocation(2, 4, 4))
    both = r"1 device.*trains on 1 node\(s\).*--nodes 2.*`-- --trainer.devices=4 --trainer.num_nodes=2`"
    with pytest.raises(SubmitError, match=both):
        check_allocation({"accelerator": "gpu", "devices": 1}, Allocation(2, 4, 4))
    with pytest.raises(SubmitError, match="--gpus-per-node 0.*--trainer.accelerator=cpu"):
        check_allocation({"accelerator": "gpu", "devices": 2}, Allocation(1, 2, 0))
    with pytest.raises(SubmitError, match="trains on the CPU.*--trainer.accelerator=gpu"):
        check_allocation({"accelerator": "cpu", "devices": 2}, Allocation(1, 2, 2))


def test_submit_options_take_both_spellings_and_repeated_configs():
    own, fit = split_fit_args(["--config", "a.yaml", "--gpus-per-node", "2", "--config=b.yaml", "--dry-run",
                               "--", "--trainer.max_steps=3", "--config", "c.yaml"])  # fmt: skip
    assert own == ["--config", "[a.yaml, b.yaml]", "--gpus_per_node", "2", "--dry_run"]
    assert fit == ["--trainer.max_steps=3", "--config", "c.yaml"]


def _dry_run(capsys, *args: str) -> str:
    assert main(["slurm", "submit", "--dry-run", *args]) == 0
    return capsys.readouterr().out


def test_dry_run_prints_a_complete_script(capsys, tmp_path):
    script = _dry_run(capsys, "--config", RECIPE, "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
                      "--cpus-per-task", "8", "--time", "2:00:00", "--", "--trainer.accelerator=gpu",
                      "--trainer.devices=4", "--trainer.num_nodes=2", f"--trainer.default_root_dir={tmp_path}")  # fmt: skip
    assert "{{" not in script.replace("{{…}}", "")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --partition=gpu", "#SBATCH --time=2:00:00",
                 f"#SBATCH --output={tmp_path}/slurm/%x-%j.out", "--print_config", "srun --kill-on-bad-exit=1",
                 "%x-%j-node%n-task%t.out", "--trainer.callbacks+=spare_train.launch.SlurmRequeue"):  # fmt: skip
        assert line in script, line
    assert f"--config {RECIPE} --trainer.accelerator=gpu --trainer.devices=4" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (tmp_path / "slurm").exists()  # a dry run creates nothing


def test_sweep_agents_dry_run(capsys, tmp_path):
    script = _dry_run(capsys, "--sweep", str(ROOT / "recipes" / "sweeps" / "prm-tiny.yaml"), "--sweep-id",
                      "team/proj/abc123", "--agents", "8", "--parallel", "2", "--gpus-per-node", "0")  # fmt: skip
    for line in ("#SBATCH --array=0-7%2", "#SBATCH --ntasks-per-node=1", "-m wandb agent --count 1 team/proj/abc123",
                 "%x-%A_%a.out", "sweep-trial.sh"):  # fmt: skip
        assert line in script, line
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_sweep_trial_runs_the_agents_command_as_one_srun_step(tmp_path):
    """sweep-trial.sh (the agent's `spare-train`): prints the trial's recipe, then one srun step
    in a folder named after the wandb run; srun and the Python are recorders here."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    for name in ("srun", "python"):
        (bin_dir / name).write_text(f'#!/bin/bash\nprintf "%s\\n" "$(basename "$0")" "$@" "--" >> {calls}\n')
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SPARE_TRAIN_PYTHON": str(bin_dir / "python"), "WANDB_RUN_ID": "abc1",
           "SWEEP_RUNS_DIR": str(tmp_path / "runs"), "SWEEP_LOG_DIR": str(tmp_path / "logs")}  # fmt: skip
    agent_args = ["fit", "--config", "recipes/prm/tiny.yaml", "--model.init_args.lr=0.001"]
    trial_script = str(ROOT / "slurm" / "sweep-trial.sh")
    done = subprocess.run(["bash", trial_script, *agent_args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    printed, launched = [c.strip("\n").split("\n") for c in calls.read_text().split("--\n") if c.strip()]
    trial = [*agent_args, f"--trainer.default_root_dir={tmp_path / 'runs' / 'abc1'}",
             "--trainer.callbacks+=spare_train.launch.SlurmRequeue"]  # fmt: skip
    assert printed == ["python", "-m", "spare_train.cli", *trial, "--print_config"]
    assert launched == ["srun", "--kill-on-bad-exit=1", f"--output={tmp_path / 'logs'}/%x-%A_%a-abc1-task%t.out",
                        str(bin_dir / "python"), "-m", "spare_train.cli", *trial]  # fmt: skip


def test_submit_refuses_what_would_not_run(capsys):
    assert main(["slurm", "submit", "--nodes", "1"]) == 1
    assert "--config RECIPE" in capsys.readouterr().err
    assert main(["slurm", "submit", "--config", RECIPE, "--gpus-per-node", "0", "--dry-run", "--",
                 "--model.init_args.no_such_option=1"]) == 1  # fmt: skip
    assert "the recipe does not parse" in capsys.readouterr().err


@pytest.mark.slow
def test_requeue_callback_outside_slurm_saves_stops_and_resumes(tmp_path, monkeypatch):
    """Without SLURM there is nothing to requeue: the signal still ends the run at a step
    boundary with ``hpc_ckpt_1.ckpt``, from which ``--ckpt_path hpc`` resumes."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    run = tmp_path / "run"
    args = ["fit", "--config", RECIPE, "--trainer.max_steps=4", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={run}",
            "--trainer.callbacks+=spare_train.launch.SlurmRequeue"]  # fmt: skip
    assert main([*args, "--trainer.callbacks+=slurm_pause.SignalSelfAt", "--trainer.callbacks.step=2"]) == 0
    saved = load_checkpoint(run / "hpc_ckpt_1.ckpt")
    assert saved["global_step"] == 3
    assert max(load_checkpoint(p)["global_step"] for p in run.rglob("last.ckpt")) == 3  # stopped there
    assert main([*args, "--ckpt_path", "hpc"]) == 0
    assert max(load_checkpoint(p)["global_step"] for p in run.rglob("last.ckpt")) == 4
    assert not (run / "hpc_ckpt_2.ckpt").exists()


@pytest.mark.slow
def test_a_run_stopped_by_sigterm_leaves_the_processs_sigterm_handler_as_it_found_it(tmp_path):
    """SaveOnSigterm ends the run with an exception, after which Lightning restores the handlers
    it found when the run started and no callback teardown runs: the flag-only handler must not
    be what it found, or the process (a notebook, this test) could no longer be stopped by SIGTERM."""
    before = signal.getsignal(signal.SIGTERM)
    args = ["fit", "--config", RECIPE, "--trainer.max_steps=4", "--trainer.limit_val_batches=0",
            "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path}",
            "--trainer.callbacks+=slurm_pause.SignalSelfAt", "--trainer.callbacks.step=2",
            "--trainer.callbacks.signal=SIGTERM"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 143
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.slow
def test_requeue_signal_between_accumulated_batches_waits_for_the_optimizer_step(tmp_path, monkeypatch):
    """With gradient accumulation, a signal that arrives after the first micro-batch of a step is
    acted on after the step's last one: a checkpoint taken in between would lose the accumulated
    gradient. The resumed run then ends with the uninterrupted run's weights."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    common = ["fit", "--config", RECIPE, "--trainer.max_steps=4", "--trainer.accumulate_grad_batches=2",
              "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false"]  # fmt: skip
    assert main([*common, f"--trainer.default_root_dir={tmp_path / 'whole'}"]) == 0
    run = tmp_path / "run"
    args = [*common, f"--trainer.default_root_dir={run}", "--trainer.callbacks+=spare_train.launch.SlurmRequeue"]
    # sent before the first micro-batch of step 3 (batch 4 of the epoch)
    assert main([*args, "--trainer.callbacks+=slurm_pause.SignalSelfAt", "--trainer.callbacks.step=2"]) == 0
    saved = load_checkpoint(run / "hpc_ckpt_1.ckpt")
    assert saved["global_step"] == 3
    assert list(saved["PRMDataModule"]["train_position"]) == [0, 6]  # both micro-batches of step 3 done
    assert main([*args, "--ckpt_path", "hpc"]) == 0
    got = max((load_checkpoint(p) for p in run.rglob("last.ckpt")), key=lambda c: c["global_step"])  # the resumed run's
    [want] = [load_checkpoint(p) for p in (tmp_path / "whole").rglob("last.ckpt")]
    assert got["global_step"] == want["global_step"] == 4
    diff = max(float((got["state_dict"][k] - want["state_dict"][k]).abs().max()) for k in want["state_dict"])
    assert diff <= 1e-6, diff


# ---- against a real one-node SLURM cluster --------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    from slurm_cluster import SlurmCluster, missing_reason

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster()
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def small_train(tmp_path_factory) -> str:
    """192 training records: 6 steps of 2 ranks x 16 per epoch (the tests cut epochs to 3 steps)."""
    lines = Path(resolve_bundled("bundled:synth/train.jsonl")).read_text().splitlines(keepends=True)[:192]
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(lines))
    return str(path)


MAX_STEPS, STEPS_PER_EPOCH = 8, 3


def submit_job(cluster, monkeypatch, folder: Path, train: str, *extra: str) -> tuple[int, str]:
    """Submit the tiny PRM recipe as a 2-task CPU DDP job through ``spare-train slurm submit``:
    (its exit code, what it printed: the job id)."""
    env = {**cluster.env, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(folder)
    args = ["slurm", "submit", "--config", RECIPE, "--gpus-per-node", "0", "--tasks-per-node", "2",
            "--cpus-per-task", "1", "--time", "0:30:00", "--",
            "--trainer.devices=2", f"--trainer.max_steps={MAX_STEPS}", f"--trainer.limit_train_batches={STEPS_PER_EPOCH}",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            f"--data.init_args.train={train}", f"--trainer.default_root_dir={folder / 'run'}", *extra]  # fmt: skip
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue().strip()


def logs(folder: Path) -> dict[str, str]:
    return {p.name.rsplit("-", 1)[-1]: p.read_text(errors="replace") for p in (folder / "run" / "slurm").glob("*.out")}


def final_checkpoint(folder: Path) -> dict:
    """The run's last.ckpt with the most steps (a resumed run writes a new lightning_logs version)."""
    found = [load_checkpoint(p) for p in (folder / "run").rglob("last.ckpt")]
    assert found, f"no last.ckpt under {folder}"
    return max(found, key=lambda c: c["global_step"])


def same_weights(a: dict, b: dict) -> bool:
    return a["state_dict"].keys() == b["state_dict"].keys() and all(
        torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]
    )


@pytest.fixture(scope="module")
def reference(cluster, small_train, tmp_path_factory):
    """An uninterrupted 2-task job that keeps its weights after every step: (its folder, its
    scontrol record)."""
    folder = tmp_path_factory.mktemp("reference")
    every_step = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {
        "dirpath": str(folder / "run" / "steps"), "filename": "{step}", "every_n_train_steps": 1, "save_top_k": -1}}
    with pytest.MonkeyPatch.context() as mp:
        code, job = submit_job(cluster, mp, folder, small_train, f"--trainer.callbacks+={json.dumps(every_step)}")
    assert code == 0
    return folder, cluster.wait_for_job(job, timeout=900)


def test_mismatch_fails_before_sbatch(cluster, small_train, tmp_path, monkeypatch, capsys):
    before = cluster.run("squeue", "-h", "-o", "%i").stdout.split()
    code, out = submit_job(cluster, monkeypatch, tmp_path, small_train, "--trainer.devices=4")
    assert code == 1 and out == ""
    err = capsys.readouterr().err
    assert "runs 4 device(s) per node" in err and "starts 2 task(s) per node" in err, err
    assert cluster.run("squeue", "-h", "-o", "%i").stdout.split() == before
    assert not (tmp_path / "run" / "slurm").exists()


def test_ddp_job_completes_with_a_checkpoint(reference):
    folder, info = reference
    log = logs(folder)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, log)
    assert set(log) == {f"{info['JobId']}.out", "task0.out", "task1.out"}
    assert "class_path: spare_train.prm.PRMModule" in log[f"{info['JobId']}.out"]  # --print_config first
    assert "spare_train.launch.SlurmRequeue" in log[f"{info['JobId']}.out"]
    assert "MEMBER: 2/2" in log["task1.out"]  # two ranks in one process group
    ckpt = final_checkpoint(folder)
    assert ckpt["global_step"] == MAX_STEPS
    assert len(ckpt["rng_states_per_rank"]) == 2


def test_preempted_job_requeues_and_resumes_from_its_checkpoint(cluster, reference, small_train, tmp_path, monkeypatch):
    """SIGUSR1 (what ``--signal=SIGUSR1@90`` sends before the time limit) twice: while step 3, the
    last of epoch 0, is about to run, and while step 5, the middle of epoch 1, is. Each time the
    step runs, every rank saves ``hpc_ckpt_N.ckpt`` after it, rank 0 requeues the job, and the job
    starts again, resumes from that checkpoint by itself and goes on; the third run finishes.
    The uninterrupted reference job kept its weights after every step to compare with."""
    pause = {"class_path": "slurm_pause.PauseForSignal", "init_args": {"steps": [2, 4], "folder": str(tmp_path)}}
    code, job = submit_job(cluster, monkeypatch, tmp_path, small_train, f"--trainer.callbacks+={json.dumps(pause)}")
    assert code == 0
    ended = lambda: cluster.ended(cluster.job(job))  # noqa: E731
    for step in (2, 4):
        paused = lambda: all((tmp_path / f"paused-{step}-{r}").exists() for r in (0, 1))  # noqa: E731,B023
        assert cluster.wait_until(lambda: paused() or ended(), 600) and paused(), (cluster.job(job), logs(tmp_path))  # noqa: B023
        cluster.run("scancel", "--signal=USR1", job)
    info = cluster.wait_for_job(job, timeout=900)
    log = logs(tmp_path)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0" and info["Restarts"] == "2", (info, log)

    run, steps = tmp_path / "run", reference[0] / "run" / "steps"
    first, second = load_checkpoint(run / "hpc_ckpt_1.ckpt"), load_checkpoint(run / "hpc_ckpt_2.ckpt")
    assert (first["global_step"], second["global_step"]) == (3, 5)
    for n in (1, 2):
        assert f"Restoring states from the checkpoint path at {run / f'hpc_ckpt_{n}.ckpt'}" in log["task0.out"]
    # resumed at an epoch boundary (after step 3): step 5 has the uninterrupted run's weights exactly
    assert same_weights(second, load_checkpoint(steps / "step=5.ckpt"))
    final = final_checkpoint(tmp_path)
    assert final["global_step"] == MAX_STEPS
    # resumed mid-epoch (after step 5): the DataModule's sampler position travels in the checkpoint,
    # so the requeued job takes the rest of epoch 1's batches and ends with the same weights
    assert "not resumable" not in log["task0.out"]
    assert same_weights(final, load_checkpoint(steps / f"step={MAX_STEPS}.ckpt"))
