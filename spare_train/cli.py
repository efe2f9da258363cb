"""The ``spare-train`` command: a thin dispatcher to one module per sub-command.

Each sub-command lives with the code it drives and exposes ``main(argv)``; imports are lazy so
``spare-train data …`` never pays for importing Lightning.
"""

from __future__ import annotations

import importlib
import os
import sys

#: sub-command -> module whose ``main(argv: list[str]) -> int | None`` runs it
COMMANDS: dict[str, str] = {
    "data": "spare_train.data_cli",
    "fit": "spare_train.lightning_cli",
    "validate": "spare_train.lightning_cli",
    "test": "spare_train.lightning_cli",
    "evaluate": "spare_train.evaluate",
    "export": "spare_train.export",
    "score": "spare_train.scoring",
}

USAGE = """usage: spare-train COMMAND [options]

commands:
  data      convert | prepare | synth   read, validate and tokenise annotation files
  fit       train a PRM or an offline-RL policy from a recipe (LightningCLI)
  validate  run the validation loop of a recipe
  test      run the test loop of a recipe
  evaluate  step / first-error / best-of-N metrics of a trained PRM
  export    write a Hugging Face folder from a checkpoint
  score     score step-annotated records with an exported PRM

`spare-train COMMAND --help` shows each command's options."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0
    if argv[0] == "--version":
        from spare_train import __version__

        print(__version__)
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"spare-train: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    module = importlib.import_module(COMMANDS[command])
    rest = argv if module.__name__ == "spare_train.lightning_cli" else argv[1:]
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
