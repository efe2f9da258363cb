"""Progress a user can read (issue 10, item 6): the epochs a run really takes, the batches left,
no `v_num`, and plain lines at a steady interval when stderr is not a terminal (as under pytest)."""

from __future__ import annotations

import types

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from spare_train.progress import LineProgressBar, SpareRichProgressBar, planned_epochs, progress_bar, track


def fake_trainer(**kw):
    ready = types.SimpleNamespace(current=types.SimpleNamespace(ready=kw.pop("ready", 0)))
    base = {"num_training_batches": 315, "max_epochs": 100, "max_steps": 2400, "accumulate_grad_batches": 1,
            "global_step": 0, "fit_loop": types.SimpleNamespace(epoch_loop=types.SimpleNamespace(batch_progress=ready))}
    return types.SimpleNamespace(**{**base, **kw})


def test_planned_epochs_follow_max_steps():
    assert planned_epochs(fake_trainer()) == 8  # 2400 steps of 315 batches (a tiny PRM run), not 100 epochs
    assert planned_epochs(fake_trainer(max_steps=6)) == 1
    assert planned_epochs(fake_trainer(max_steps=-1, max_epochs=3)) == 3
    assert planned_epochs(fake_trainer(max_steps=100, accumulate_grad_batches=8)) == 3  # 40 steps per epoch
    assert planned_epochs(fake_trainer(max_steps=-1, max_epochs=-1)) is None


def test_rich_bar_epoch_count_and_total():
    bar = SpareRichProgressBar()
    bar._trainer = fake_trainer(max_steps=6)
    assert bar._get_train_description(0).strip() == "Epoch 1/1"
    assert bar.total_train_batches == 6  # the batches left before max_steps, not the epoch's 315
    bar._trainer = fake_trainer(global_step=2400 - 10, ready=5)
    assert bar.total_train_batches == 15
    assert bar._get_train_description(7).strip() == "Epoch 8/8"


class Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(16, 2), torch.randn(16, 1)), batch_size=4)  # 4 batches


def test_lines_in_a_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPARE_TRAIN_PROGRESS_EVERY", "0")  # a line per step, to see them all
    bar = progress_bar()
    assert isinstance(bar, LineProgressBar)
    trainer = L.Trainer(max_steps=6, max_epochs=100, callbacks=[bar], logger=CSVLogger(tmp_path), accelerator="cpu",
                        enable_checkpointing=False, enable_model_summary=False, val_check_interval=3,
                        limit_val_batches=1, num_sanity_val_steps=0)  # fmt: skip
    trainer.fit(Regression(), loader(), loader())
    err = capsys.readouterr().err
    assert "training: 6 optimizer steps, 2 epoch(s) of 4 batches" in err
    lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert lines[0].startswith("epoch 1/2  step 1/6 (17%)") and lines[-1].startswith("epoch 2/2  step 6/6 (100%)")
    assert all("steps/s" in line and "left" in line and "train/loss" in line for line in lines)
    assert "validation at step 3: val/loss" in err and "training done: 6 optimizer steps" in err
    assert "v_num" not in err
    rich = SpareRichProgressBar()
    assert "v_num" not in rich.get_metrics(trainer, trainer.lightning_module)  # CSVLogger's version is not shown
    assert "train/loss" in rich.get_metrics(trainer, trainer.lightning_module)


def test_track_prints_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("SPARE_TRAIN_PROGRESS_EVERY", "0")
    assert list(track(range(3), 3, "scoring")) == [0, 1, 2]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("scoring: 1/3 batches (33%)") and err[-1].startswith("scoring: 3/3 batches in ")


def test_the_offline_rl_demo_trains_with_progress(tmp_path, monkeypatch):
    from spare_train.demo_policy import trainer

    monkeypatch.setenv("SPARE_TRAIN_PROGRESS_EVERY", "30")
    bars = [c for c in trainer(5, tmp_path).callbacks if isinstance(c, LineProgressBar)]
    assert len(bars) == 1 and bars[0].every == 30
