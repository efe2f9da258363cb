"""Signals a scheduler sends before it stops a job, acted on at an optimizer-step boundary.

A signal can arrive anywhere: mid-backward, between accumulated micro-batches (whose gradients a
checkpoint does not hold), or while another rank is inside a collective. Saving from the signal
handler, as Lightning's SLURM handler does, starts collectives at a different point on each rank.
:class:`StepBoundarySignal` is the one mechanism both preemption callbacks use:

1. its handler only raises a flag (installed when training starts, over the handler Lightning
   composes for SIGTERM; for other signals already in ``setup``, which keeps Lightning's own
   handler off them, since it only registers one where none is set);
2. at the end of each optimizer step (never between accumulated micro-batches) the ranks agree,
   with one all-reduce of a bool, whether any of them got the signal;
3. if so, every rank calls :meth:`~StepBoundarySignal.act` together.

Two actions use it: :class:`SaveOnSigterm` (here; both modules' ``configure_callbacks`` add it)
saves ``last.ckpt`` and ends the run with exit status 143 (0 when the job requeued itself), and
:class:`spare_train.launch.SlurmRequeue` saves ``hpc_ckpt_N.ckpt`` on SIGUSR1 and requeues the
SLURM job. A signal sent only to the launching process reaches the other ranks through step 2.
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
    """Whether an ``hpc_ckpt_*.ckpt`` (a requeued SLURM job's checkpoint) was written under ``root`` since ``since``."""
    return any(p.stat().st_mtime >= since for p in Path(root).glob("hpc_ckpt_*.ckpt"))


def signal_number(name: str | int) -> int:
    """``"SIGUSR1"``, ``"USR1"`` or a number -> the signal number."""
    if isinstance(name, int):
        return name
    name = name.upper()
    return int(getattr(signal.Signals, name if name.startswith("SIG") else f"SIG{name}"))


class StepBoundarySignal(Callback):
    """Raise a flag on ``signum``; at the next optimizer-step boundary, if any rank has it, every
    rank runs :meth:`act` (see the module docstring). Subclasses define :meth:`act`."""

    def __init__(self, signum: str | int) -> None:
        self.signum = signal_number(signum)
        self.received = False
        self._previous: Any = None
        self._installed = False

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = True

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        previous = signal.signal(self.signum, self._on_signal)
        if not self._installed:  # keep what was there before the run, to restore at teardown
            self._previous, self._installed = previous, True

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        # Lightning registers its handler for a signal other than SIGTERM only where none is set
        # (its SLURM handler saves inside the handler): installing first keeps it off. SIGTERM it
        # composes with whatever is set and, after a failed run, restores what it found: installing
        # ours before it would leave the flag-only handler in place after the run.
        if stage == "fit" and self.signum != signal.SIGTERM:
            self._install()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._install()  # after Lightning registered its handlers (Trainer._run), before the first batch

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._installed:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._previous, self._installed = None, False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if trainer.fit_loop._should_accumulate():  # mid-accumulation: the next boundary acts
            return
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):  # collective
            return
        self.received = False
        self.act(trainer)

    def act(self, trainer: Any) -> None:
        """What every rank does, together, at the step boundary after the signal."""
        raise NotImplementedError


class SaveOnSigterm(StepBoundarySignal):
    """On SIGTERM: save ``last.ckpt`` at the step boundary (what ``--ckpt_path last`` resumes from)
    and stop with exit status 143, or 0 when the job requeued itself during this run.

    Without it, Lightning stops at the next batch *without* a checkpoint and ``spare-train fit``
    exited 0, so a preempted run looked finished."""

    def __init__(self) -> None:
        super().__init__(signal.SIGTERM)
        self._started = time.time()

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self._started = time.time()

    def act(self, trainer: Any) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        code = 0 if requeued(trainer.default_root_dir, self._started) else EXIT_PREEMPTED
        if trainer.is_global_zero:
            print(f"SIGTERM: saved {path} at optimizer step {trainer.global_step}; resume with --ckpt_path last"
                  + ("" if code else " (the job requeued itself)"), file=sys.stderr, flush=True)  # fmt: skip
        raise Preempted(code)
