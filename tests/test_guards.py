"""The non-finite loss guard in one process: ``raise`` names the step and the records and updates
nothing; ``skip`` leaves weights and optimiser state untouched for that step and counts it.
(Under 2-process DDP, with a resume, in tests/test_faults.py.)"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from fault_hooks import Poison
from spare_train.models.backbone import BackboneConfig, LoraSettings
from spare_train.models.finite import NonFiniteError as NonFiniteLossError, NonFiniteLoss
from spare_train.prm.module import PRMModule
from test_backbone import tiny_folder
from test_prm import loader, trainer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("tiny"))


class Snapshots(Callback):
    """Trainable weights before each optimizer step's batch."""

    def __init__(self):
        self.before = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before[trainer.global_step] = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def module_for(folder, mode):
    L.seed_everything(0)
    bb = BackboneConfig(name_or_path=folder, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    return PRMModule(backbone=bb, lr=1e-2, nonfinite_loss=mode)


def test_raise_names_the_step_and_records_and_updates_nothing(folder, tmp_path):
    module = module_for(folder, "raise")
    snaps, ids_file = Snapshots(), tmp_path / "ids.json"
    t = trainer(max_epochs=2, callbacks=[snaps, Poison(at_step=1, ids_file=str(ids_file))])
    with pytest.raises(NonFiniteLossError) as err:
        t.fit(module, loader(module))
    ids = json.loads(ids_file.read_text())
    message = str(err.value)
    assert "not finite at optimizer step 1" in message and all(repr(i) in message for i in ids), message
    assert "nonfinite_loss skip" in message
    for name, p in module.named_parameters():
        if p.requires_grad:
            assert torch.equal(p.detach(), snaps.before[1][name]), name  # no update from the bad batch
    assert "nonfinite_loss" not in module.hparams  # a resume's command line decides, not the checkpoint


def test_skip_leaves_the_step_untouched_and_counts_it(folder, tmp_path):
    module = module_for(folder, "skip")
    snaps, ids_file = Snapshots(), tmp_path / "ids.json"
    t = trainer(max_epochs=2, callbacks=[snaps, Poison(at_step=1, ids_file=str(ids_file))])
    t.fit(module, loader(module))  # 2 epochs of 2 batches: 4 optimizer steps
    guard = next(c for c in t.callbacks if isinstance(c, NonFiniteLoss))
    assert guard.skipped == 1 and guard.skipped_ids == json.loads(ids_file.read_text())
    assert t.global_step == 4
    for name in snaps.before[1]:  # the weights before and after the skipped step are the same
        assert torch.equal(snaps.before[1][name], snaps.before[2][name]), name
        assert not torch.equal(snaps.before[2][name], snaps.before[3][name]), name  # later steps train
    steps = {float(s["step"]) for s in t.optimizers[0].state.values()}
    assert steps == {3.0}  # Adam took 3 steps, not 4
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())
    assert float(t.callback_metrics["train/skipped_nonfinite_batches"]) == 1.0
