"""The ``spare-train`` command: one jsonargparse CLI over typed signatures.

``fit``, ``validate`` and ``test`` are Lightning's own CLI (:class:`SpareCLI`): every option of the
Trainer, the LightningModule and the DataModule, generated from their signatures and docstrings.
The other commands are parsers built from the functions that run them (``data convert|prepare|
synth``, ``evaluate``, ``export``, ``score``), so ``--help`` is the reference and every flag is
spelled the same way (``--reader_options``, ``--batch_size``); boolean options are bare flags
(``--strict``, ``--no_strict``). Each command imports only its own module.

A user's mistake (a wrong option, format, path or file) ends the command here, in
:func:`main`, with one ``error: …`` line and a non-zero exit instead of a traceback: the parsers
raise instead of exiting, the small checks below (:func:`check_reader`, :func:`check_configs`) and
the commands raise :class:`~spare_train.report.DataError`, and :func:`main` prints what
:func:`user_errors` lists. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spare_train.quiet import silence_third_party
from spare_train.report import DataError

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
  slurm     submit: a recipe (or wandb sweep agents) as a checked SLURM job (docs/cluster.md)
  critique  critique step-annotated records with an exported critic (per-step verdicts)

`spare-train COMMAND --help` shows each command's options."""

#: what users change first in a recipe, shown at the end of ``spare-train fit --help``
FIT_TIPS = """Options users change first (any option of a recipe can be overridden the same way):
  --config RECIPE                       a recipe from recipes/ (give --config twice to add a fragment)
  --trainer.max_steps N                 optimizer steps (recipes report how many ran)
  --model.init_args.lr LR               peak learning rate
  --data.init_args.train FILE           training annotations (--data.init_args.format picks the reader)
  --data.init_args.batch_size N         examples per batch per device
  --trainer.default_root_dir DIR        where logs and checkpoints go
  --ckpt_path last                      resume from the newest checkpoint under default_root_dir
  --config recipes/strategies/ddp.yaml  several GPUs (also fsdp2.yaml, fsdp1.yaml; see docs/distributed.md)
  --print_config                        show the resolved recipe and stop
  --model.help CLASS, --data.help CLASS the options of a recipe's model or data class, e.g.
                                        --model.help spare_train.prm.PRMModule"""


FIT_HELP = {"epilog": FIT_TIPS, "description": "Train a PRM or an offline-RL policy from a recipe. The options "
            "users change first are listed at the end of this help."}  # fmt: skip


def check_reader(fmt: str, options: dict[str, Any] | None, where: str = "--format") -> None:
    """A reader name and its options, checked before any file is read (``DataError`` otherwise)."""
    from spare_train.formats import READERS, reader_options

    if fmt not in READERS:
        raise DataError("unknown_format", f"{fmt!r} is not a reader; choose one of {', '.join(sorted(READERS))}", where)
    known = reader_options(fmt)
    unknown = sorted(set(options or {}) - set(known))
    if unknown:
        raise DataError("unknown_reader_option", f"{', '.join(unknown)} for format {fmt!r}; its options are "
                        f"{', '.join(sorted(known)) or 'none'}", "--reader_options")  # fmt: skip


def config_paths(argv: list[str]) -> list[str]:
    """The files given as ``--config FILE`` or ``--config=FILE``."""
    paths = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    return paths + [a.partition("=")[2] for a in argv if a.startswith("--config=")]


def check_configs(argv: list[str]) -> None:
    """Every ``--config FILE`` exists (jsonargparse would print the whole usage first)."""
    for path in config_paths(argv):
        if not Path(path).is_file():
            raise DataError("missing_config", f"no such file: {path} (recipes are in recipes/, or bundled:recipes/…)", "--config")


def _help_formatter() -> type:
    from jsonargparse import DefaultHelpFormatter

    class KeepLines(DefaultHelpFormatter):
        """Prints descriptions and the epilog as written (the fit tips are a table)."""

        def _fill_text(self, text: str, width: int, indent: str) -> str:
            return "".join(indent + line for line in text.splitlines(keepends=True))

    return KeepLines


def lightning_cli(args: list[str] | None = None, run: bool = True) -> Any:
    """Lightning's CLI for ``args`` (``[subcommand, options…]``); see :class:`SpareCLI`."""
    from lightning.pytorch.callbacks import ProgressBar
    from lightning.pytorch.cli import LightningCLI

    from spare_train.progress import progress_bar

    silence_third_party()

    class SpareCLI(LightningCLI):
        """Links the DataModule's tokenizer and prompt format to the model, so a recipe writes
        them once, under ``data``, and the trained model (and its export) carries them. Checks the
        reader right after parsing, and adds :func:`spare_train.progress.progress_bar` unless
        the recipe names a progress bar."""

        def add_arguments_to_parser(self, parser: Any) -> None:
            parser.link_arguments("data.tokenizer_name", "model.init_args.tokenizer", apply_on="instantiate")
            parser.link_arguments("data.format_config", "model.init_args.prompt_format", apply_on="instantiate")

        def parse_arguments(self, parser: Any, args: Any) -> None:
            self.config = parser.parse_args(args)  # as Lightning's, without its args-and-sys.argv warning
            sub = self.config.get("subcommand")
            data = ((self.config[sub] if sub else self.config).get("data") or {}).get("init_args") or {}
            if data.get("format") is not None:
                check_reader(data["format"], data.get("reader_options"), "--data.init_args.format")

        def instantiate_classes(self) -> None:
            """As Lightning's, but a constructor's ``ValueError`` (our modules check their
            arguments that way: ``objective=nope``, ``focal_gamma=-1``) ends the command with its
            own message, not jsonargparse's dump of every union member it tried."""
            try:
                super().instantiate_classes()
            except ValueError as err:
                raise invalid_option(err) from err

        def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
            named = [*(config.get("callbacks") or []), *callbacks]
            if config.get("enable_progress_bar", True) is not False and not any(isinstance(c, ProgressBar) for c in named):
                callbacks = [*callbacks, progress_bar()]
            return super()._instantiate_trainer(config, callbacks)

        def _parse_ckpt_path(self) -> None:
            """As Lightning's, but a checkpoint's hyper-parameters cannot choose the module class,
            the model, the tokenizer or loader options such as ``trust_remote_code``: the recipe's
            stand (:func:`spare_train.models.hf.checkpoint_cli_hparams`)."""
            from spare_train.models.hf import checkpoint_cli_hparams, load_checkpoint

            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            if path and os.path.isfile(path):
                hparams = checkpoint_cli_hparams(load_checkpoint(path), self.config[sub].get("model"))
                if hparams:
                    self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)

        def before_fit(self) -> None:
            resolve_last_checkpoint(self.config_init[self.subcommand], self.trainer.default_root_dir)

        before_validate = before_test = before_fit

    from lightning.pytorch import LightningDataModule, LightningModule

    from spare_train.launch.tracking import SaveAndLogConfig

    return SpareCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        seed_everything_default=0,
        save_config_callback=SaveAndLogConfig,  # also logs the resolved recipe to wandb
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "spare-train", "default_env": False, "exit_on_error": False,
                       "formatter_class": _help_formatter(),  # subcommands inherit it
                       **{c: {"exit_on_error": False, **(FIT_HELP if c == "fit" else {})} for c in LIGHTNING_COMMANDS}},
    )  # fmt: skip


def resolve_last_checkpoint(config: Any, root: str) -> None:
    """``--ckpt_path last``: the newest complete checkpoint anywhere under ``root``
    (:func:`spare_train.models.checkpoint.find_last_checkpoint`); Lightning would look only in
    this new run's ``version_N`` folder and silently start over."""
    if config.get("ckpt_path") != "last":
        return
    from spare_train.models.checkpoint import find_last_checkpoint

    found = find_last_checkpoint(root)
    if found is None:
        print(f"--ckpt_path last: no checkpoint under {root}; training from the start", file=sys.stderr)
        config["ckpt_path"] = None
    else:
        print(f"--ckpt_path last: resuming from {found}", file=sys.stderr)
        config["ckpt_path"] = found


def _doc_params(fn: Callable) -> dict[str, str]:
    from docstring_parser import parse

    return {p.arg_name: (p.description or "").replace("\n", " ") for p in parse(fn.__doc__ or "").params}


def function_parser(fn: Callable, prog: str, positional: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> Any:
    """A parser for ``fn``'s typed signature; booleans become bare flags (``--x`` / ``--no_x``)."""
    from jsonargparse import ActionYesNo, ArgumentParser

    description = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    parser = ArgumentParser(prog=prog, description=description, default_env=False, exit_on_error=False)
    params = inspect.signature(fn).parameters
    flags = {n for n, p in params.items() if p.annotation in (bool, "bool")}
    docs = _doc_params(fn)
    for name in positional:
        parser.add_argument(name, help=docs.get(name, ""))
    parser.add_function_arguments(fn, skip=flags | set(positional) | set(skip), fail_untyped=True)
    for name in sorted(flags):
        parser.add_argument(f"--{name}", action=ActionYesNo, default=params[name].default, help=docs.get(name, ""))
    return parser


#: command -> (``module:function`` that runs it, its positional arguments)
COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "data convert": ("spare_train.data.commands:convert", ()),
    "data prepare": ("spare_train.data.commands:prepare", ()),
    "evaluate": ("spare_train.prm.evaluate:evaluate", ()),
    "export": ("spare_train.export:export", ("ckpt", "out")),
    "score": ("spare_train.prm.scoring:score", ()),
    "critique": ("spare_train.critique.generate:critique", ()),
}


def command_function(name: str) -> tuple[Callable, tuple[str, ...]]:
    target, positional = COMMANDS[name]
    module, _, fn = target.partition(":")
    return getattr(importlib.import_module(module), fn), positional


def _synth_parser() -> Any:
    from jsonargparse import ArgumentParser

    from spare_train.synth import SynthConfig

    parser = ArgumentParser(prog="spare-train data synth", default_env=False, exit_on_error=False,
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
    fn, positional = command_function(name)
    ns = function_parser(fn, f"spare-train {name}", positional).parse_args(argv).as_dict()
    if "format" in ns:
        check_reader(ns["format"], ns.get("reader_options"))
    if name == "data prepare":
        check_configs(["--config", ns["config"]])
    result = fn(**ns)
    return result if isinstance(result, int) else 0


def resolve_config_args(argv: list[str]) -> list[str]:
    """``--config bundled:recipes/…`` names a recipe shipped with the package (see
    :func:`spare_train.assets.resolve_bundled`); other arguments are returned as they are."""
    from spare_train.assets import resolve_bundled

    out = []
    try:
        for i, a in enumerate(argv):
            if i and argv[i - 1] == "--config":
                a = resolve_bundled(a)
            elif a.startswith("--config="):
                a = "--config=" + resolve_bundled(a[len("--config=") :])
            out.append(a)
    except FileNotFoundError as err:  # an unknown bundled: root
        raise DataError("missing_config", str(err), "--config") from None
    return out


def invalid_option(err: ValueError) -> DataError:
    """The ``ValueError`` a constructor raised, under the wrapping jsonargparse adds while it
    instantiates a recipe's classes, as a :class:`DataError` (one ``error:`` line in :func:`main`)."""
    root: BaseException = err
    while isinstance(root.__cause__, ValueError):
        root = root.__cause__
    if isinstance(root, DataError):
        return root
    return DataError("invalid_option", str(root))


def user_errors() -> tuple[type[BaseException], ...]:
    """What a user's mistake raises: our :class:`DataError` and a parser's ``ArgumentError``."""
    from jsonargparse import ArgumentError

    return DataError, ArgumentError


def main(argv: list[str] | None = None) -> int:
    silence_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv = resolve_config_args(argv)
        if argv and argv[0] in LIGHTNING_COMMANDS:
            check_configs(argv)
        return _dispatch(argv)
    except user_errors() as err:
        command = " ".join(argv[: 2 if argv[:1] == ["data"] else 1])
        print(f"error: {err}", file=sys.stderr)
        if not isinstance(err, DataError):
            print(f"(`spare-train {command} --help` lists the options)", file=sys.stderr)
        return 2 if not isinstance(err, DataError) else 1


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
        # a run stopped by SIGTERM raises SystemExit(143) after saving (0 if it requeued itself);
        # see spare_train.models.preemption
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
    if command == "slurm":
        return _slurm(argv[1:])
    print(f"spare-train: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


def _slurm(argv: list[str]) -> int:
    from spare_train.launch.slurm import SubmitError, split_fit_args, submit

    if argv[:1] != ["submit"]:
        print("usage: spare-train slurm submit --config RECIPE --nodes N --gpus-per-node G [options] [-- fit options]\n"
              "`spare-train slurm submit --help` shows its options.", file=sys.stderr)  # fmt: skip
        return 0 if argv[:1] in (["-h"], ["--help"]) else 2
    own, fit_args = split_fit_args(argv[1:])
    ns = function_parser(submit, "spare-train slurm submit", skip=("fit_args",)).parse_args(own).as_dict()
    try:
        return submit(**ns, fit_args=fit_args)
    except SubmitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
