"""Callbacks the fault tests add to ``spare-train fit`` runs (``--trainer.callbacks+=fault_hooks.X``):
they stop a run at a known point, slow a checkpoint write down, or plant a NaN. Test-only."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


def _touch(path: str, text: str = "") -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


class Hang(Callback):
    """Block every rank before the batch of optimizer step ``at_step`` (after ``marker`` is written),
    so a ``kill -9`` lands mid-epoch at a known point."""

    def __init__(self, at_step: int, marker: str) -> None:
        self.at_step, self.marker = at_step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            _touch(f"{self.marker}.{trainer.global_rank}")
            time.sleep(3600)


class Pace(Callback):
    """From optimizer step ``from_step`` on, write ``marker`` and sleep ``seconds`` before each batch,
    so that a signal sent after the marker arrives while training is still going."""

    def __init__(self, from_step: int, marker: str, seconds: float = 1.0) -> None:
        self.from_step, self.marker, self.seconds = from_step, marker, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.from_step:
            if trainer.is_global_zero:
                _touch(self.marker)
            time.sleep(self.seconds)


class SlowSave(Callback):
    """From the checkpoint of step ``at_step`` on, the next ``torch.save`` writes half its bytes,
    writes ``marker`` and blocks: a crash in the middle of writing that checkpoint."""

    def __init__(self, at_step: int, marker: str) -> None:
        self.at_step, self.marker = at_step, marker

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if trainer.global_step < self.at_step or getattr(torch.save, "_slow", False):
            return
        real, marker, rank = torch.save, self.marker, trainer.global_rank

        def slow(obj, f, *args, **kwargs):
            if isinstance(f, io.BytesIO):  # e.g. all_gather_object's serialisation, not a file
                return real(obj, f, *args, **kwargs)
            buf = io.BytesIO()
            real(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            if isinstance(f, (str, Path)):
                f = open(f, "wb")
            f.write(data[: len(data) // 2])
            f.flush()
            _touch(f"{marker}.{rank}")
            time.sleep(3600)

        slow._slow = True
        torch.save = slow


class Poison(Callback):
    """Make one batch's training loss NaN (as an overflow on one sequence would): at optimizer step
    ``at_step`` on rank ``rank``; the batch's record ids are written to ``ids_file``."""

    def __init__(self, at_step: int, ids_file: str, rank: int = 0) -> None:
        self.at_step, self.ids_file, self.rank = at_step, ids_file, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.at_step or trainer.global_rank != self.rank:
            return
        _touch(self.ids_file, json.dumps(list(batch["ids"])))
        loss = pl_module.loss

        def nan_loss(*args, **kwargs):
            del pl_module.loss  # back to the method for the next batch
            return loss(*args, **kwargs) * float("nan")

        pl_module.loss = nan_loss
