"""Test-only callbacks for the preemption tests: preemption at a known training step.

The job imports it from tests/ (the test puts that folder on the job's PYTHONPATH). Before each
of ``steps`` each rank writes ``folder/paused-STEP-RANK`` and waits until its own
:class:`~spare_train.launch.SlurmRequeue` has seen the signal the test sends meanwhile
(``scancel --signal=USR1``); the step then runs and the checkpoint lands right after it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from spare_train.launch import SlurmRequeue


class PauseForSignal(Callback):
    """Waits before each of ``steps`` until the test's signal came (see the module docstring)."""

    def __init__(self, steps: list[int], folder: str, timeout: float = 300.0) -> None:
        self.steps, self.folder, self.timeout = steps, Path(folder), timeout

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step not in self.steps:
            return
        requeue = next(cb for cb in trainer.callbacks if isinstance(cb, SlurmRequeue))
        (self.folder / f"paused-{trainer.global_step}-{trainer.global_rank}").touch()
        deadline = time.monotonic() + self.timeout
        while not requeue.received:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no signal within {self.timeout} s")
            time.sleep(0.1)


class SignalSelfAt(Callback):
    """Sends this process ``signal`` before step ``step`` (rank 0): preemption without SLURM."""

    def __init__(self, step: int, signal: str = "SIGUSR1") -> None:
        self.step, self.signal = step, signal

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), getattr(signal, self.signal))
