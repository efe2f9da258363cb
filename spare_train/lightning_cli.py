"""``spare-train fit|validate|test``: LightningCLI over any LightningModule and DataModule.

Model and data are chosen by class path (subclass mode), so the PRM
(``spare_train.prm.PRMModule``) and the offline-RL policy (``spare_train.offline_rl.OfflineRLModule``)
share one command and one recipe layout::

    spare-train fit --config recipes/prm/tiny.yaml --model.init_args.lr=3e-4 --trainer.max_steps=20

Every option of the Trainer, the module and the DataModule is an option here (generated from
their typed signatures and docstrings: ``spare-train fit --help``, ``--model.help PRMModule``).
The model takes the tokenizer and step tag from the DataModule when its own are unset, so they
are written once, under ``data``.
"""

from __future__ import annotations

import os
from typing import Any

#: used when a recipe names no logger: CSV files under runs/ (wandb: see recipes' trainer.logger)
DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs"}}


def make_cli(args: list[str] | None, run: bool = True) -> Any:
    """Build (and with ``run``, execute) the CLI for ``args`` (``[subcommand, options…]``)."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    return LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        trainer_defaults={"logger": DEFAULT_LOGGER},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``spare-train fit|validate|test``; ``argv[0]`` is the subcommand."""
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    # args=None when they are the process's own (LightningCLI warns about receiving both)
    make_cli(None if args == sys.argv[1:] else args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
