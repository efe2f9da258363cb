"""Checkpoint plumbing without training: atomic writes, finding the checkpoint to resume, folder
swaps, requeue detection, the sampler position, FSDP1's wrap policy."""

from __future__ import annotations

import os
import time

import pytest
import torch
from torch import nn

from spare_train.data.sampler import LengthGroupedSampler
from spare_train.models.checkpoint import AtomicCheckpointIO, find_last_checkpoint
from spare_train.models.parallel import decoder_layer_policy, recover_swap, swap_into_place
from spare_train.models.preemption import requeued


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 2, "w": torch.ones(3)}, path)
    real = torch.save

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError):
        io.save_checkpoint({"global_step": 4, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert find_last_checkpoint(tmp_path) == str(path)  # the half-written temporary never counts
    io.save_checkpoint({"global_step": 6}, path)  # the next save clears the stale temporary
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_find_last_checkpoint_takes_the_newest_complete_one_anywhere_under_the_root(tmp_path):
    io = AtomicCheckpointIO()
    old = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 2}, old)
    time.sleep(0.05)
    periodic = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "epoch=0-step=4-periodic.ckpt"
    io.save_checkpoint({"global_step": 4}, periodic)
    time.sleep(0.05)
    (tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "truncated.ckpt").write_bytes(b"PK\x03\x04")
    incomplete = tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "sharded.ckpt"
    incomplete.mkdir()  # shards without meta.pt: a save that did not finish
    (incomplete / "__0_0.distcp").write_bytes(b"x")
    assert find_last_checkpoint(tmp_path) == str(periodic)
    assert find_last_checkpoint(tmp_path / "nowhere") is None


def test_folder_swap_and_recovery(tmp_path):
    path, tmp = tmp_path / "last.ckpt", tmp_path / ".last.ckpt.tmp"
    for step in (2, 4):
        tmp.mkdir()
        (tmp / "meta.pt").write_text(str(step))
        swap_into_place(tmp, path)
        assert (path / "meta.pt").read_text() == str(step) and not tmp.exists()
    # a crash between the two renames: the old folder is aside, the new one not yet in place
    path.replace(tmp_path / ".last.ckpt.old")
    assert find_last_checkpoint(tmp_path) == str(path)  # put back before searching
    assert (path / "meta.pt").read_text() == "4"
    recover_swap(path)  # nothing to do
    assert path.is_dir()


def test_requeued_means_an_hpc_checkpoint_written_during_this_run(tmp_path):
    start = time.time()
    assert not requeued(tmp_path, start)
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    os.utime(tmp_path / "hpc_ckpt_1.ckpt", (start - 100, start - 100))
    assert not requeued(tmp_path, start)  # from an earlier run
    (tmp_path / "hpc_ckpt_2.ckpt").write_bytes(b"x")
    assert requeued(tmp_path, start)


def test_sampler_batches_do_not_depend_on_the_process_count_and_resume_skips_done_batches():
    lengths = [(i * 37) % 101 for i in range(400)]
    one = LengthGroupedSampler(lengths, 4, seed=3, mega_batch_mult=10, step_batches=2)  # 1 process, accumulation 2
    two = [LengthGroupedSampler(lengths, 4, num_replicas=2, rank=r, seed=3, mega_batch_mult=10) for r in range(2)]
    b0, b1 = two[0].batches(), two[1].batches()
    assert len(b0) == len(b1) == 50
    assert [b for pair in zip(b0, b1) for b in pair] == one.batches()  # step k = batches 2k, 2k+1 of one process
    spread = [max(lengths[i] for i in x + y) - min(lengths[i] for i in x + y) for x, y in zip(b0, b1)]
    assert sum(spread) / len(spread) < 25  # the two ranks of a step hold similar lengths (random: ~80)
    two[0].resume(epoch=0, batches_done=7)
    assert list(two[0]) == [i for b in b0[7:] for i in b]
    assert list(two[0]) == [i for b in b0 for i in b]  # only the next iteration skips
    two[0].resume(epoch=0, batches_done=7)
    two[0].set_epoch(1)  # another epoch: nothing skipped
    assert len(list(two[0])) == 200


class DecoderLayer(nn.Linear):
    pass


def test_fsdp1_wrap_policy_wraps_decoder_layers_only():
    assert decoder_layer_policy(nn.Module(), recurse=True, nonwrapped_numel=0)
    assert decoder_layer_policy(DecoderLayer(2, 2), recurse=False, nonwrapped_numel=6)
    assert not decoder_layer_policy(nn.Linear(2, 2), recurse=False, nonwrapped_numel=6)
