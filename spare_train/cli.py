"""The ``spare-train`` command: one jsonargparse CLI over typed signatures.

``fit``, ``validate`` and ``test`` are Lightning's own CLI (:class:`SpareCLI`): every option of the
Trainer, the LightningModule and the DataModule, generated from their signatures and docstrings.
The other commands are parsers built from the functions that run them (``data convert|prepare|
synth``, ``evaluate``, ``export``, ``score``), so ``--help`` is the reference and every flag is
spelled the same way (``--reader_options``, ``--batch_size``); boolean options are bare flags
(``--strict``, ``--no_strict``). Imports are lazy, so ``spare-train data …`` never imports
Lightning.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

#: commands handled by Lightning's CLI
LIGHTNING_COMMANDS = ("fit", "validate", "test")

USAGE = """usage: spare-train COMMAND [options]

commands:
  fit       train a PRM or an offline-RL policy from a recipe (spare-train fit --config RECIPE)
  validate  run the validation loop of a recipe
  test      run the test loop of a recipe
  data      convert | prepare | synth: read, validate and tokenise annotation files
  evaluate  step / first-error / best-of-N metrics of an exported PRM or critic
  export    write a Hugging Face folder from a checkpoint
  score     score step-annotated records with an exported PRM
  critique  critique step-annotated records with an exported critic (per-step verdicts)

`spare-train COMMAND --help` shows each command's options."""

#: what users change first in a recipe, shown at the top of ``spare-train fit --help``
FIT_TIPS = """Options users change first (any option of a recipe can be overridden the same way):
  --config RECIPE                       a recipe from recipes/ (give --config twice to add a fragment)
  --trainer.max_steps N                 optimizer steps (recipes report how many ran)
  --model.init_args.lr LR               peak learning rate
  --data.init_args.train FILE           training annotations (--data.init_args.format picks the reader)
  --data.init_args.batch_size N         examples per batch per device
  --trainer.default_root_dir DIR        where logs and checkpoints go
  --ckpt_path last                      resume from the newest checkpoint of the run
  --print_config                        show the resolved recipe and stop"""


def lightning_cli(args: list[str] | None = None, run: bool = True) -> Any:
    """Lightning's CLI for ``args`` (``[subcommand, options…]``); see :class:`SpareCLI`."""
    from lightning.pytorch.cli import LightningCLI

    class SpareCLI(LightningCLI):
        """Links the DataModule's tokenizer and prompt format to the model, so a recipe writes
        them once, under ``data``, and the trained model (and its export) carries them."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.tokenizer_name", "model.init_args.tokenizer", apply_on="instantiate")
            parser.link_arguments("data.format_config", "model.init_args.prompt_format", apply_on="instantiate")
            parser.description = FIT_TIPS

    from lightning.pytorch import LightningDataModule, LightningModule

    return SpareCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
    )


def _doc_params(fn: Callable) -> dict[str, str]:
    from docstring_parser import parse

    return {p.arg_name: (p.description or "").replace("\n", " ") for p in parse(fn.__doc__ or "").params}


def function_parser(fn: Callable, prog: str, positional: tuple[str, ...] = ()) -> Any:
    """A parser for ``fn``'s typed signature; booleans become bare flags (``--x`` / ``--no_x``)."""
    from jsonargparse import ActionYesNo, ArgumentParser

    parser = ArgumentParser(prog=prog, description=(fn.__doc__ or "").split("\n\n")[0], default_env=False)
    params = inspect.signature(fn).parameters
    flags = {n for n, p in params.items() if p.annotation in (bool, "bool")}
    docs = _doc_params(fn)
    for name in positional:
        parser.add_argument(name, help=docs.get(name, ""))
    parser.add_function_arguments(fn, skip=flags | set(positional), fail_untyped=True)
    for name in sorted(flags):
        parser.add_argument(f"--{name}", action=ActionYesNo, default=params[name].default, help=docs.get(name, ""))
    return parser


def _commands() -> dict[str, tuple[Callable, tuple[str, ...]]]:
    from spare_train.critique.generate import critique
    from spare_train.data.commands import convert, prepare
    from spare_train.export import export
    from spare_train.prm.evaluate import evaluate
    from spare_train.prm.scoring import score

    return {
        "data convert": (convert, ()),
        "data prepare": (prepare, ()),
        "evaluate": (evaluate, ()),
        "export": (export, ("ckpt", "out")),
        "score": (score, ()),
        "critique": (critique, ()),
    }


def _synth_parser() -> Any:
    from jsonargparse import ArgumentParser

    from spare_train.synth import SynthConfig

    parser = ArgumentParser(prog="spare-train data synth", default_env=False,
                            description="Generate the synthetic SPARE data (see data/README.md).")  # fmt: skip
    parser.add_argument("--output", required=True, help="the JSONL file to write")
    parser.add_class_arguments(SynthConfig, nested_key=None)
    return parser


def run_command(name: str, argv: list[str]) -> int:
    """Parse ``argv`` for command ``name`` (e.g. ``"data convert"``) and run it."""
    if name == "data synth":
        from spare_train.data.commands import synth
        from spare_train.synth import SynthConfig

        ns = _synth_parser().parse_args(argv).as_dict()
        output = ns.pop("output")
        return synth(output, SynthConfig(**ns))
    fn, positional = _commands()[name]
    ns = function_parser(fn, f"spare-train {name}", positional).parse_args(argv).as_dict()
    result = fn(**ns)
    return result if isinstance(result, int) else 0


def resolve_config_args(argv: list[str]) -> list[str]:
    """``--config bundled:recipes/…`` names a recipe shipped with the package (see
    :func:`spare_train.assets.resolve_bundled`); other arguments are returned as they are."""
    from spare_train.assets import resolve_bundled

    out = []
    for i, a in enumerate(argv):
        if i and argv[i - 1] == "--config":
            a = resolve_bundled(a)
        elif a.startswith("--config="):
            a = "--config=" + resolve_bundled(a[len("--config=") :])
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    from spare_train.report import DataError

    argv = resolve_config_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return _dispatch(argv)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def _dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    if argv[0] == "--version":
        from spare_train import __version__

        print(__version__)
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = argv[0]
    if command in LIGHTNING_COMMANDS:
        lightning_cli(argv)
        return 0
    if command == "data":
        sub = argv[1] if len(argv) > 1 else ""
        if sub not in ("convert", "prepare", "synth"):
            print("usage: spare-train data {convert,prepare,synth} [options]\n"
                  "`spare-train data convert --help` shows each one's options.", file=sys.stderr)  # fmt: skip
            return 0 if sub in ("-h", "--help") else 2
        return run_command(f"data {sub}", argv[2:])
    if command in ("evaluate", "export", "score", "critique"):
        return run_command(command, argv[1:])
    print(f"spare-train: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
