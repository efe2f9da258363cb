"""wandb around a run, as configuration of wandb and Lightning objects.

* A recipe names ``lightning.pytorch.loggers.WandbLogger`` (``recipes/loggers/wandb.yaml`` is a
  fragment to add to any recipe); :class:`SaveAndLogConfig` then logs the whole resolved recipe
  (what ``--print_config`` prints: trainer, model, data, seed) as the run's config, next to the
  module's hyper-parameters that Lightning logs itself.
* ``spare-train export … --wandb_project PROJECT`` logs the exported folder as a ``model``
  artifact (:func:`log_model_artifact`).

``WANDB_MODE=offline`` keeps everything in ``./wandb/`` (``wandb sync`` uploads it later); the
tests run that way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.cli import SaveConfigCallback


class SaveAndLogConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the log folder, and the same resolved recipe as the config
    of every ``WandbLogger`` run (rank 0 only, once)."""

    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers:
            config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
            for logger in loggers:
                logger.log_hyperparams(config)


def log_model_artifact(folder: str | Path, project: str, name: str | None = None,
                       metadata: dict[str, Any] | None = None) -> str:  # fmt: skip
    """Log ``folder`` as a wandb artifact of type ``model`` from a short ``export`` run in
    ``project`` (``PROJECT`` or ``ENTITY/PROJECT``); returns the artifact's name."""
    import wandb

    entity, _, project = project.rpartition("/")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name or Path(folder).resolve().name)
    run = wandb.init(project=project, entity=entity or None, job_type="export", config=metadata or {})
    try:
        artifact = wandb.Artifact(name, type="model", metadata=metadata or {})
        artifact.add_dir(str(folder))
        run.log_artifact(artifact)
    finally:
        run.finish()
    return name
