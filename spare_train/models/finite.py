"""The non-finite guard: a broken model stops loudly instead of training, saving or exporting as if fine.

A NaN or infinite loss poisons every weight at the next optimizer step, and a model whose weights
are NaN scores every step NaN, which a metric could otherwise read as "lowest" or a best-of-N
pick. So, in one self-contained place used by both training modules:

* :func:`check_loss` (called by each module's ``training_step``): a loss that is not finite
  raises :class:`NonFiniteError` naming the optimizer step and batch (``nonfinite_loss="raise"``,
  the default), or skips that batch -- no backward, no optimizer step -- and counts it
  (``"skip"``: logged as ``train/skipped_nonfinite_batches``). Under several processes the ranks
  decide together, so they all skip or all stop.
* :class:`NonFiniteGuard` (a callback both modules return from ``configure_callbacks``): refuses
  to write a checkpoint whose trainable weights are not all finite.
* :func:`nonfinite_parameters`: the names of non-finite tensors, used by the exports, which
  refuse such a model too.

It knows nothing about strategies or resuming beyond ``reduce_boolean_decision``; keep it that way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from spare_train.report import DataError

#: what a training module does with a loss that is not finite
NONFINITE_LOSS = ("raise", "skip")


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


def check_loss(module: Any, loss: torch.Tensor, batch_idx: int, mode: str = "raise") -> torch.Tensor | None:
    """``loss`` when finite; else raise :class:`NonFiniteError` (``mode="raise"``) or return
    ``None``, which makes Lightning skip the backward pass and the optimizer step (``"skip"``)."""
    if _agree(module, bool(torch.isfinite(loss.detach()).all())):
        return loss
    step, epoch = module.global_step, module.current_epoch
    if mode == "raise":
        raise NonFiniteError("nonfinite_loss", f"the training loss is {float(loss)} at optimizer step {step} "
                             f"(epoch {epoch}, batch {batch_idx}); lower the learning rate or check the data, "
                             "or set the model's nonfinite_loss: skip to skip such batches")  # fmt: skip
    if mode != "skip":
        raise ValueError(f"nonfinite_loss must be one of {NONFINITE_LOSS}, not {mode!r}")
    module.skipped_nonfinite_batches = getattr(module, "skipped_nonfinite_batches", 0) + 1
    from lightning.pytorch.utilities import rank_zero_warn

    rank_zero_warn(f"skipped batch {batch_idx} at optimizer step {step}: the loss is {float(loss)} "
                   f"({module.skipped_nonfinite_batches} batch(es) skipped so far)")  # fmt: skip
    module.log("train/skipped_nonfinite_batches", float(module.skipped_nonfinite_batches), reduce_fx="max")
    return None


class NonFiniteGuard(Callback):
    """Refuse to save a checkpoint whose trainable weights are not all finite (see module docstring)."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        check_weights(pl_module, f"to save a checkpoint at optimizer step {trainer.global_step}", trainable_only=True)
