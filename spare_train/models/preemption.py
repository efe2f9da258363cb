"""SIGTERM, what a scheduler sends before it kills a job: save a checkpoint, then exit non-zero.

Lightning, on SIGTERM, stops at the next batch *without* a checkpoint and ``spare-train fit``
then exited 0, so a preempted run looked finished. :class:`SaveOnSigterm` (returned by both
modules' ``configure_callbacks``) instead:

1. replaces Lightning's SIGTERM handler once training starts with one that only sets a flag (no
   collective inside a signal handler, which could pair with another rank's gradient all-reduce);
2. at the end of each optimizer step (never between accumulated micro-batches, whose gradients a
   checkpoint does not hold) the ranks agree whether any of them got the signal;
3. if so, every rank saves ``last.ckpt`` in the checkpoint folder (what ``--ckpt_path last``
   resumes from) and the run ends with :class:`Preempted`: exit status 143 (128 + SIGTERM), or 0
   when Lightning's SLURM auto-requeue saved an ``hpc_ckpt_*.ckpt`` during this run, i.e. the job
   has requeued itself and will resume.

A signal sent to the launching process reaches the other ranks through step 2; one sent to every
process (as SLURM does) works the same.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException

#: exit status of a run stopped by SIGTERM that did not requeue itself (128 + 15, as a shell reports it)
EXIT_PREEMPTED = 143


class Preempted(SIGTERMException):
    """The run saved a checkpoint after SIGTERM and stops; ``code`` is the process exit status."""


def last_checkpoint_path(trainer: Any) -> Path:
    """``last.ckpt`` in the first ModelCheckpoint's folder (else in ``default_root_dir``)."""
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "dirpath", None):
        return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "last.ckpt"


def requeued(root: str | Path, since: float) -> bool:
    """Whether Lightning's SLURM auto-requeue wrote an ``hpc_ckpt_*.ckpt`` under ``root`` since ``since``."""
    return any(p.stat().st_mtime >= since for p in Path(root).glob("hpc_ckpt_*.ckpt"))


class SaveOnSigterm(Callback):
    """Checkpoint and stop (non-zero unless requeued) after SIGTERM; see the module docstring."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False
        self._started = time.time()

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # after Lightning registered its handlers (Trainer._run), before the first batch
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
            self._installed = True
        self._started = time.time()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate():
            return
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):  # collective
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        code = 0 if requeued(trainer.default_root_dir, self._started) else EXIT_PREEMPTED
        if trainer.is_global_zero:
            print(f"SIGTERM: saved {path} at optimizer step {trainer.global_step}; resume with --ckpt_path last"
                  + ("" if code else " (the job requeued itself)"), file=sys.stderr, flush=True)  # fmt: skip
        raise Preempted(code)
