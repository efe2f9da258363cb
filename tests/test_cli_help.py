"""Help texts a newcomer reads (issue 10, item 8): no description or group title cut mid-sentence,
and `spare-train fit --help` ends with the options users change first."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from pathlib import Path

import pytest
import yaml

from spare_train.cli import COMMANDS, FIT_TIPS, command_function, main

ROOT = Path(__file__).resolve().parents[1]


def class_paths(node: object) -> set[str]:
    """Every ``class_path`` in a recipe."""
    if isinstance(node, dict):
        found = {node["class_path"]} if isinstance(node.get("class_path"), str) else set()
        return found.union(*(class_paths(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(class_paths(v) for v in node))
    return set()


def resolve(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def dataclass_options(cls: type, seen: set[type]) -> None:
    """``cls`` and the dataclasses its ``__init__`` (and its bases') take, as jsonargparse shows them."""
    if cls in seen:
        return
    seen.add(cls)
    for klass in cls.__mro__ if inspect.isclass(cls) else ():
        init = klass.__dict__.get("__init__")
        if init is None or not klass.__module__.startswith("spare_train"):
            continue
        for hint in typing.get_type_hints(init).values():
            for arg in (hint, *typing.get_args(hint)):
                if dataclasses.is_dataclass(arg):
                    dataclass_options(arg, seen)


def shown_in_help() -> list[object]:
    """What jsonargparse titles a help group with: recipe classes, their dataclass options, the
    objectives and the functions behind the commands."""
    from spare_train.policy.objectives import OBJECTIVES
    from spare_train.synth import SynthConfig

    seen: set[type] = set()
    for recipe in sorted((ROOT / "recipes").rglob("*.yaml")):
        for path in class_paths(yaml.safe_load(recipe.read_text())):
            if path.startswith("spare_train."):
                dataclass_options(resolve(path), seen)
    for cls in (*OBJECTIVES.values(), SynthConfig):
        dataclass_options(cls, seen)
    return sorted(seen, key=lambda c: c.__qualname__) + [command_function(c)[0] for c in COMMANDS]


@pytest.mark.parametrize("obj", shown_in_help(), ids=lambda o: o.__qualname__)
def test_first_docstring_line_is_a_whole_sentence(obj):
    """jsonargparse takes a docstring's first line as the title of its options (docstring_parser's
    short description), so a summary that wraps onto a second line is shown cut mid-sentence."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    first = doc.splitlines()[0] if doc else ""
    assert first.rstrip().endswith((".", "?", "!")) or "\n" not in doc.split("\n\n")[0], first


@pytest.mark.parametrize("command", [c.split() for c in COMMANDS] + [["data", "synth"]], ids=" ".join)
def test_every_command_help_describes_it_in_whole_sentences(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    description = text.split("\n\n")[1].replace("\n", " ").strip()
    assert description.endswith("."), description


def test_fit_help_ends_with_the_options_users_change_first(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: spare-train [options] fit")
    assert text.rstrip().endswith(FIT_TIPS.splitlines()[-1].rstrip())
    assert FIT_TIPS in text  # verbatim, one option a line
    assert "options users change first are listed at the end" in text.split("options:")[0]
