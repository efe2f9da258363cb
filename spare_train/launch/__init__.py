"""Launching runs on clusters: SLURM job scripts (:mod:`.slurm`, templates in ``slurm/``) and the
preemption callback they add to every fit (:class:`SlurmRequeue`)."""

from spare_train.launch.requeue import SlurmRequeue

__all__ = ["SlurmRequeue"]
