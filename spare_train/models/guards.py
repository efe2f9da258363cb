"""A non-finite training loss stops the run, naming where, or skips the batch and counts it.

A NaN or infinite loss poisons every trained weight at the next optimizer step. Both modules
return :class:`NonFiniteLoss` from ``configure_callbacks`` with their ``nonfinite_loss`` option:

* ``raise`` (default): before the backward pass, stop with :class:`NonFiniteLossError` naming the
  optimizer step, epoch, batch index, the rank(s) and the batch's record ids (``ids``), so the
  record can be found in the data. Nothing has been updated yet, so the last checkpoint is good.
* ``skip``: let the backward run (under DDP every rank must), then drop the gradients of the whole
  optimizer step before it is taken (with ``accumulate_grad_batches > 1`` the other micro-batches
  of that step go too): weights and optimiser moments stay as they were; the step still counts
  toward ``max_steps`` and the schedule. The count and the skipped record ids are logged
  (``train/skipped_nonfinite_batches``) and travel with checkpoints, so a resumed run continues
  the count.

Ranks decide together (any rank non-finite means every rank raises or skips), so no rank waits on
a collective the others left. Lightning's own skip (``training_step`` returning ``None``) is
refused under several processes; this one works under one process, DDP and FSDP alike.

Resuming: a run stopped by ``raise`` resumes from its last checkpoint with
``--model.init_args.nonfinite_loss skip`` to get past the bad batch; the option is not stored as a
hyper-parameter, so what the command line says is what the resumed run does.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import Callback

from spare_train.report import DataError

NonFiniteMode = Literal["raise", "skip"]


class NonFiniteLossError(DataError):
    """The training loss is NaN or infinite (the CLI prints it and exits 1)."""


class NonFiniteLoss(Callback):
    """Raise on, or skip, batches whose training loss is not finite (see the module docstring)."""

    def __init__(self, mode: NonFiniteMode = "raise", max_ids: int = 20) -> None:
        if mode not in ("raise", "skip"):
            raise ValueError(f"nonfinite_loss must be 'raise' or 'skip', not {mode!r}")
        self.mode = mode
        self.max_ids = max_ids
        self.skipped = 0
        self.skipped_ids: list[str] = []
        self._ids: list[str] = []
        self._drop_step = False

    @property
    def state_key(self) -> str:
        return "NonFiniteLoss"  # one per run whatever the mode, so a resume may change the mode

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        ids = batch.get("ids") if isinstance(batch, dict) else None
        self._ids = [str(i) for i in ids] if ids is not None else []
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(bad, all=False):
            return
        where = _bad_ranks(trainer, bad, self._ids, float(loss.detach().float().mean()))
        step, epoch = trainer.global_step, trainer.current_epoch
        ids = [i for _, _, rank_ids in where for i in rank_ids]
        ranks = ", ".join(f"rank {r}: loss {value}" for r, value, _ in where)
        if self.mode == "raise":
            raise NonFiniteLossError(
                "nonfinite_loss",
                f"the training loss is not finite at optimizer step {step} (epoch {epoch}, batch {self._batch_idx}; "
                f"{ranks}); the batch's records: {ids[: self.max_ids]}. Nothing was updated: check those records "
                "or lower the learning rate, or resume with --model.init_args.nonfinite_loss skip",
                where=f"step {step}",
            )  # fmt: skip
        self.skipped += 1
        self.skipped_ids = (self.skipped_ids + ids)[-self.max_ids :]
        self._drop_step = True
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(f"skipping optimizer step {step} (epoch {epoch}, batch {self._batch_idx}): the loss is not "
                       f"finite ({ranks}); records {ids[: self.max_ids]}; {self.skipped} skipped so far")  # fmt: skip

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._drop_step:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None  # the optimiser then leaves p and its state untouched
            self._drop_step = False
        if self.mode == "skip":
            pl_module.log("train/skipped_nonfinite_batches", float(self.skipped), rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_ids": list(self.skipped_ids)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.skipped_ids = list(state_dict.get("skipped_ids", []))


def _bad_ranks(trainer: Any, bad: bool, ids: list[str], value: float) -> list[tuple[int, float, list[str]]]:
    """``(rank, loss, record ids)`` of every rank whose loss is not finite (gathered when distributed)."""
    mine = (trainer.global_rank, value, ids) if bad else None
    if trainer.world_size <= 1:
        return [mine] if mine else []
    import torch.distributed as dist

    out: list[Any] = [None] * trainer.world_size
    dist.all_gather_object(out, mine)
    return [x for x in out if x is not None]
