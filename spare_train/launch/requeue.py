"""Preemption on SLURM: a checkpoint at a step boundary, then ``scontrol requeue``.

SLURM warns a job before its time limit (``#SBATCH --signal=SIGUSR1@90``) or when an admin or a
test sends the signal (``scancel --signal=USR1 JOB``). Lightning's own SLURM handler saves its
``hpc_ckpt_N.ckpt`` *inside the signal handler*: wherever each rank happens to be, mid-backward
included, and with collectives (our per-rank RNG gather, the save barrier) that the ranks then
reach in different orders. :class:`SlurmRequeue` is a
:class:`~spare_train.models.preemption.StepBoundarySignal`: the handler only raises a flag, and at
the end of the next optimizer step (not between accumulated micro-batches) every rank learns
whether any rank saw the signal, all save the same checkpoint together, and rank 0 requeues the
job. The requeued job resumes from it by itself: Lightning restores the newest
``hpc_ckpt_N.ckpt`` of ``trainer.default_root_dir`` whenever it runs under SLURM and
``ckpt_path`` is not given.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from spare_train.models.preemption import StepBoundarySignal

log = logging.getLogger(__name__)

#: the file name Lightning's checkpoint connector resumes from under SLURM (``hpc_ckpt_N.ckpt``)
HPC_PATTERN = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")


def next_hpc_checkpoint(root: str | Path) -> Path:
    """``root/hpc_ckpt_{N+1}.ckpt`` where N is the highest number already there (0 when none)."""
    root = Path(root)
    numbers = [int(m.group(1)) for p in root.glob("hpc_ckpt_*.ckpt") if (m := HPC_PATTERN.match(p.name))]
    return root / f"hpc_ckpt_{max(numbers, default=0) + 1}.ckpt"


def slurm_job_to_requeue() -> str | None:
    """``JOBID``, or ``ARRAYID_TASKID`` inside an array task: what ``scontrol requeue`` takes."""
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_id:
        return f"{array_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


class SlurmRequeue(StepBoundarySignal):
    """On ``signal``, save ``hpc_ckpt_N.ckpt`` at the next step boundary and requeue the SLURM job.

    Args:
        signal: the signal SLURM sends before the time limit (``--signal=SIGUSR1@90`` in the
            templates of ``slurm/``).
        requeue: run ``scontrol requeue`` after saving (off: save and stop; resubmitting the same
            script resumes from the checkpoint).
        wait_for_sigterm: seconds to wait, once requeued, for SLURM to end the run.
    """

    def __init__(self, signal: str = "SIGUSR1", requeue: bool = True, wait_for_sigterm: float = 120.0) -> None:
        super().__init__(signal)
        self.requeue = requeue
        self.wait_for_sigterm = wait_for_sigterm

    def act(self, trainer: Any) -> None:
        path = trainer.strategy.broadcast(str(next_hpc_checkpoint(trainer.default_root_dir)), src=0)
        trainer.save_checkpoint(path)  # collective: every rank takes part
        for logger in trainer.loggers:
            logger.save()
        if trainer.is_global_zero:
            log.warning("signal %d: saved %s after step %d", self.signum, path, trainer.global_step)
        if self.requeue and slurm_job_to_requeue():
            # The requeue ends this run with SIGTERM. With the checkpoint saved, dying of it at once
            # is right, and Lightning's SIGTERM handler would start a collective from inside a
            # signal handler, at a different point on each rank.
            previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
            trainer.strategy.barrier("spare_train.requeue")
            requeued = trainer.strategy.broadcast(self._requeue(trainer) if trainer.is_global_zero else False, src=0)
            if requeued:
                time.sleep(self.wait_for_sigterm)  # SLURM's SIGTERM ends the process meanwhile
            signal.signal(signal.SIGTERM, previous)
        elif trainer.is_global_zero:
            log.warning("not requeued: resubmit the job to resume from %s", path)
        trainer.should_stop = True  # stop cleanly: the checkpoint is there for whoever resumes

    def _requeue(self, trainer: Any) -> bool:
        job = slurm_job_to_requeue()
        if job is None:
            log.warning("not running under SLURM (no SLURM_JOB_ID): nothing to requeue")
            return False
        for logger in trainer.loggers:  # a wandb sweep hands a preempted run to the next agent
            mark = getattr(getattr(logger, "experiment", None), "mark_preempting", None)
            if callable(mark) and type(logger).__name__ == "WandbLogger":
                mark()
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
            return False
        log.warning("requeued SLURM job %s", job)
        return True

