"""The non-finite guard: a broken model stops loudly instead of training, saving or exporting as if fine.

A NaN or infinite loss poisons every weight at the next optimizer step, and a model whose weights
are NaN scores every step NaN, which a metric could otherwise read as "lowest" or a best-of-N
pick. So, in one self-contained place used by both training modules:

* :class:`NonFiniteLoss` (a callback both modules return from ``configure_callbacks`` with their
  ``nonfinite_loss`` option) acts before the backward pass:

  - ``raise`` (default): stop with :class:`NonFiniteError` naming the optimizer step, epoch, batch
    index, the rank(s) and the batch's record ids, so the record can be found in the data.
    Nothing has been updated yet, so the last checkpoint is good.
  - ``skip``: let the backward run (under DDP every rank must), then drop the gradients of the
    whole optimizer step before it is taken (with ``accumulate_grad_batches > 1`` the other
    micro-batches of that step go too): weights and optimiser moments stay as they were; the step
    still counts toward ``max_steps`` and the schedule. The count and the skipped record ids are
    logged (``train/skipped_nonfinite_batches``) and travel with checkpoints.

  Ranks decide together (any rank non-finite means every rank raises or skips), so no rank waits
  on a collective the others left; Lightning's own skip (``training_step`` returning ``None``) is
  refused under several processes, this one works under one process, DDP and FSDP alike. A run
  stopped by ``raise`` resumes past the bad batch with ``--model.init_args.nonfinite_loss skip``:
  the option is not a saved hyper-parameter, so the command line decides.
* :class:`NonFiniteGuard` (a callback too): refuses to write a checkpoint whose trainable weights
  are not all finite.
* :func:`check_weights`: the exports refuse such a model too.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch.callbacks import Callback

from spare_train.report import DataError

#: what a training module does with a loss that is not finite
NonFiniteMode = Literal["raise", "skip"]


class NonFiniteError(DataError):
    """A loss, weight or score that is NaN or infinite (``kind`` says which; the CLI exits 1)."""


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity (quantised storage skipped:
    its packed bytes are not numbers)."""
    bad = []
    for name, t in named:
        if t is None or not t.is_floating_point() or type(t).__name__ in ("Params4bit", "Int8Params"):
            continue
        if not bool(torch.isfinite(t.detach()).all()):
            bad.append(name)
    return bad


def nonfinite_parameters(module: torch.nn.Module, trainable_only: bool = False) -> list[str]:
    """Names of ``module``'s non-finite parameters (only those that receive gradients, if asked)."""
    return nonfinite_tensors((n, p) for n, p in module.named_parameters() if p.requires_grad or not trainable_only)


def check_weights(module: torch.nn.Module, refusing: str, where: str = "", trainable_only: bool = False) -> None:
    """Raise :class:`NonFiniteError` ``refusing …`` when a weight of ``module`` is not finite."""
    bad = nonfinite_parameters(module, trainable_only)
    if not _agree(module, not bad):
        names = ", ".join(bad[:3]) + (", …" if len(bad) > 3 else "")
        raise NonFiniteError("nonfinite_weights", f"refusing {refusing}: {len(bad)} weight tensor(s) are not finite "
                                                  f"({names or 'on another rank'})", where)  # fmt: skip


def _agree(module: Any, ok: bool) -> bool:
    """``ok`` on every rank (``all``), so that ranks never take different branches."""
    trainer = getattr(module, "_trainer", None)
    return trainer.strategy.reduce_boolean_decision(ok, all=True) if trainer is not None else ok


class NonFiniteGuard(Callback):
    """Refuse to save a checkpoint whose trainable weights are not all finite (see module docstring)."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        check_weights(pl_module, f"to save a checkpoint at optimizer step {trainer.global_step}", trainable_only=True)


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
            raise NonFiniteError(
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
