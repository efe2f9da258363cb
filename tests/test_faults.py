"""Runs that survive faults, through ``spare-train fit`` in subprocesses (CPU, gloo; 1 and 2 processes):

* ``kill -9`` in the middle of an epoch, then ``--ckpt_path last``: the final weights, optimiser
  and schedule equal an uninterrupted run's (data order, sampler position, per-rank dropout RNG);
* a crash while a checkpoint is being written leaves the previous one whole and resumable
  (single file, and the sharded folder of FSDP2, which Lightning rewrites in place);
* SIGTERM saves a checkpoint and exits 143, and the run resumes from it;
* a NaN loss stops the run naming the step and the records, and a resume with
  ``nonfinite_loss: skip`` gets past it and counts it.

The tiny PRM trains with LoRA dropout 0.1, so an RNG not restored per rank would show.
"""

from __future__ import annotations

import csv
import json
import signal

import pytest
import torch
import yaml

from distributed_helpers import (
    fit,
    final_checkpoint,
    fit_command,
    kill_group,
    load,
    max_abs_diff,
    small_spare_file,
    start,
    wait_for,
)

pytestmark = pytest.mark.slow

#: resumed vs uninterrupted weights and optimiser state: the same arithmetic in the same order
RESUME_ATOL = 1e-6
STEPS = 8
RECIPE = "prm/tiny.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    train = small_spare_file(root / "train.jsonl", 240)  # 216 train examples: 54 batches of 4, 27 steps x 2
    fragment = {
        "model": {"init_args": {"backbone": {"lora": {"r": 4, "alpha": 8, "dropout": 0.1}}, "lr": 2e-3}},
        "data": {"init_args": {"train": str(train), "batch_size": 4, "cache_dir": str(root / "cache")}},
        "trainer": {
            "max_steps": STEPS, "limit_val_batches": 0, "log_every_n_steps": 1,
            # last.ckpt rewritten every 2 optimizer steps (the file a crash mid-save must not break)
            "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                           "init_args": {"save_last": True, "every_n_train_steps": 2, "save_top_k": 0}}],
        },
    }  # fmt: skip
    (root / "faults.yaml").write_text(yaml.safe_dump(fragment))
    return root


def args(setup, *extra):
    return ("--config", str(setup / "faults.yaml"), *extra)


def hook(name, **init):
    out = [f"--trainer.callbacks+=fault_hooks.{name}"]
    return out + [f"--trainer.callbacks.init_args.{k}={v}" for k, v in init.items()]


STRATEGY = {1: {}, 2: {"devices": 2, "strategy": "ddp"}}


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """The reference runs: 1 process and 2-process DDP, never stopped."""
    out = {}
    for n in (1, 2):
        run = setup / f"uninterrupted-{n}"
        fit(RECIPE, run, *args(setup), **STRATEGY[n])
        out[n] = load(_newest(run))
    return out


def _newest(run):
    return final_checkpoint(run)


def assert_same_training_state(got, want):
    assert got["global_step"] == want["global_step"] == STEPS
    assert set(got["state_dict"]) == set(want["state_dict"])
    assert all("lora_" in k for k in got["state_dict"])  # LoRA: trainable tensors only
    weights = max_abs_diff(got["state_dict"], want["state_dict"])
    opt_g, opt_w = got["optimizer_states"][0]["state"], want["optimizer_states"][0]["state"]
    moments = max(float((torch.as_tensor(opt_g[i][k]).float() - torch.as_tensor(opt_w[i][k]).float()).abs().max())
                  for i in opt_w for k in opt_w[i])  # fmt: skip
    print(f"max |difference| resumed vs uninterrupted: weights {weights:.3g}, optimiser state {moments:.3g}")
    assert weights <= RESUME_ATOL and moments <= RESUME_ATOL
    assert got["lr_schedulers"][0]["last_epoch"] == want["lr_schedulers"][0]["last_epoch"] == STEPS


def resume(setup, run, *extra, expect=0, **kw):
    """``spare-train fit … --ckpt_path last`` in ``run`` (the same root directory); checks that it
    continued from the newest checkpoint rather than starting over (which, seeded, would end with
    the same weights)."""
    start_step = load(_newest(run))["global_step"]
    proc = fit(RECIPE, run, *args(setup), "--ckpt_path", "last", *extra, expect=expect, **kw)
    newest_log = max(run.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)  # the resumed process's
    steps = [int(r["step"]) for r in csv.DictReader(newest_log.open()) if r.get("train/loss")]
    assert steps and min(steps) >= start_step, (start_step, steps[:3])
    return proc


@pytest.mark.parametrize("n", [1, 2], ids=["1-process", "2-process-ddp"])
def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(setup, uninterrupted, n):
    run, marker = setup / f"kill9-{n}", setup / f"kill9-{n}.marker"
    proc = start(fit_command(RECIPE, run, *args(setup, *hook("Hang", at_step=5, marker=marker)), **STRATEGY[n]),
                 setup / f"kill9-{n}.log")  # fmt: skip
    wait_for((setup, marker.name + ".0"), proc)
    kill_group(proc)  # SIGKILL to every rank: no handler runs, nothing is flushed
    last = load(_newest(run))
    assert last["global_step"] == 4  # the checkpoint of step 4; steps 5.. are lost
    assert list(last["PRMDataModule"]["train_position"]) == [0, 4]  # epoch 0, 4 batches per rank done
    resume(setup, run, **STRATEGY[n])
    assert_same_training_state(load(_newest(run)), uninterrupted[n])


def test_crash_while_writing_a_checkpoint_leaves_the_last_one_whole(setup, uninterrupted):
    """The step-4 rewrite of last.ckpt is cut half-way by kill -9: last.ckpt still holds step 2."""
    run, marker = setup / "slowsave-1", setup / "slowsave-1.marker"
    proc = start(fit_command(RECIPE, run, *args(setup, *hook("SlowSave", at_step=4, marker=marker))),
                 setup / "slowsave-1.log")  # fmt: skip
    wait_for((setup, marker.name + ".0"), proc)
    kill_group(proc)
    last = next(run.rglob("last.ckpt"))
    assert list(last.parent.glob(".last.ckpt.*.tmp")), "the kill did not land during the write"
    assert load(last)["global_step"] == 2
    resume(setup, run)
    assert_same_training_state(load(_newest(run)), uninterrupted[1])


def test_crash_while_writing_a_sharded_checkpoint_leaves_the_last_one_whole(setup, uninterrupted):
    """FSDP2 checkpoints are folders; Lightning rewrites one in place (a crash leaves new shards
    with an old index). Ours is written aside and swapped in. The resumed FSDP2 run ends where the
    uninterrupted DDP run does (FSDP2 equals DDP, tests/test_distributed.py)."""
    run, marker = setup / "slowsave-fsdp2", setup / "slowsave-fsdp2.marker"
    cmd = fit_command(RECIPE, run, *args(setup, *hook("SlowSave", at_step=4, marker=marker)), devices=2,
                      strategy="fsdp2")  # fmt: skip
    proc = start(cmd, setup / "slowsave-fsdp2.log")
    wait_for((setup, marker.name + ".0"), proc)
    kill_group(proc)
    last = next(p for p in run.rglob("last.ckpt"))
    assert last.is_dir() and (last.parent / ".last.ckpt.tmp").is_dir(), "the kill did not land during the write"
    assert load(last)["global_step"] == 2
    resume(setup, run, devices=2, strategy="fsdp2")
    assert _newest(run).is_dir()
    got, want = load(_newest(run)), uninterrupted[2]  # (a folder's optimiser state is not read back here)
    weights = max_abs_diff(got["state_dict"], want["state_dict"])
    print(f"max |weight difference| FSDP2 resumed vs DDP uninterrupted: {weights:.3g}")
    assert got["global_step"] == STEPS and weights <= 1e-5


@pytest.mark.parametrize("n", [1, 2], ids=["1-process", "2-process-ddp"])
def test_sigterm_saves_exits_nonzero_and_resumes(setup, uninterrupted, n):
    run, marker = setup / f"sigterm-{n}", setup / f"sigterm-{n}.marker"
    pace = hook("Pace", from_step=3, marker=marker, seconds=2)
    proc = start(fit_command(RECIPE, run, *args(setup, *pace), **STRATEGY[n]), setup / f"sigterm-{n}.log")
    wait_for((setup, marker.name), proc)
    proc.send_signal(signal.SIGTERM)  # to the launching process only: other ranks learn it from rank 0
    assert proc.wait(timeout=600) == 143
    log = (setup / f"sigterm-{n}.log").read_text()
    assert "SIGTERM: saved" in log
    saved = load(_newest(run))
    assert 3 <= saved["global_step"] < STEPS
    resume(setup, run, **STRATEGY[n])
    assert_same_training_state(load(_newest(run)), uninterrupted[n])


def test_nonfinite_loss_stops_naming_step_and_records_then_resume_skips_it(setup):
    """2-process DDP: rank 1's batch at step 3 has a NaN loss. ``raise`` stops every rank (exit 1)
    with the step and that batch's record ids; resuming with ``skip`` passes it and counts it."""
    run, ids_file = setup / "nonfinite", setup / "poisoned-ids.json"
    poison = hook("Poison", at_step=3, ids_file=ids_file, rank=1)
    proc = fit(RECIPE, run, *args(setup, *poison), expect=1, **STRATEGY[2])
    ids = json.loads(ids_file.read_text())
    assert "not finite at optimizer step 3" in proc.stderr and all(i in proc.stderr for i in ids), proc.stderr[-3000:]
    assert load(_newest(run))["global_step"] == 2  # the last checkpoint is from before the bad step
    resume(setup, run, *poison, "--model.init_args.nonfinite_loss=skip", **STRATEGY[2])
    final = load(_newest(run))
    assert final["global_step"] == STEPS
    guard = final["callbacks"]["NonFiniteLoss"]
    assert guard["skipped"] == 1 and guard["skipped_ids"] == ids
    assert all(bool(torch.isfinite(v).all()) for v in final["state_dict"].values())
