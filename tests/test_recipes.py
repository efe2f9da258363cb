"""Every shipped recipe (recipes/**/*.yaml, PRM and offline RL) parses through the LightningCLI,
and every strategy fragment (recipes/strategies/*.yaml) parses composed with a recipe.

Parsing resolves every class path and checks every option against the typed signatures, without
building models or reading data (``--print_config`` stops after validation). So the GPU-only
fragments (FSDP1, bf16 mixed precision) are checked here even where no GPU runs them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from spare_train.cli import lightning_cli as make_cli

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if p.parent.name != "strategies")
STRATEGIES = sorted((ROOT / "recipes" / "strategies").glob("*.yaml"))


def test_recipes_exist():
    assert any(p.parent.name == "prm" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses_and_names_its_command(path):
    text = path.read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(f"--config recipes/{path.relative_to(ROOT / 'recipes')}" in line for line in header), (
        "the header comment must give the exact command"
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        make_cli(["fit", "--config", str(path), "--print_config"])
    assert exit_.value.code in (0, None)
    resolved = yaml.safe_load(out.getvalue())
    assert resolved["model"]["class_path"].startswith("spare_train.")
    assert resolved["data"]["class_path"].startswith("spare_train.")


def test_overrides_short_and_long_forms():
    path = ROOT / "recipes" / "prm" / "tiny.yaml"
    out = io.StringIO()
    args = ["fit", "--config", str(path), "--model.lr=0.5", "--model.init_args.warmup_ratio=0.2",
            "--data.init_args.batch_size=3", "--trainer.max_steps=7", "--print_config"]  # fmt: skip
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        make_cli(args)
    cfg = yaml.safe_load(out.getvalue())
    assert cfg["model"]["init_args"]["lr"] == 0.5
    assert cfg["model"]["init_args"]["warmup_ratio"] == 0.2
    assert cfg["data"]["init_args"]["batch_size"] == 3
    assert cfg["trainer"]["max_steps"] == 7


def test_unknown_option_is_an_error():
    path = ROOT / "recipes" / "prm" / "tiny.yaml"
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as exit_:
        make_cli(["fit", "--config", str(path), "--model.init_args.no_such_option=1", "--print_config"])
    assert exit_.value.code != 0


def _resolved(*configs, extra=()):
    out = io.StringIO()
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + list(extra) + ["--print_config"]
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        make_cli(args)
    assert exit_.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize("path", STRATEGIES, ids=lambda p: p.name)
@pytest.mark.parametrize("recipe", ["prm/llama3-8b-qlora.yaml", "offline_rl/tiny-dpo.yaml"])
def test_strategy_fragment_composes_with_a_recipe(path, recipe):
    text = path.read_text()
    assert f"--config recipes/strategies/{path.name}" in text, "the header comment must give the exact command"
    cfg = _resolved(ROOT / "recipes" / recipe, path)
    strategy = cfg["trainer"]["strategy"]
    fragment = yaml.safe_load(text)["trainer"]["strategy"]
    assert strategy["class_path"] == fragment["class_path"]
    for key, value in fragment.get("init_args", {}).items():  # the fragment's settings win
        assert strategy["init_args"][key] == value, key
    assert cfg["model"]["class_path"].startswith("spare_train.")  # the recipe's model survives


def test_checkpoint_every_n_steps_is_an_override():
    cfg = _resolved(ROOT / "recipes" / "prm" / "tiny.yaml", extra=["--trainer.callbacks.init_args.every_n_train_steps=7"])
    ck = [c for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ck[-1]["init_args"]["every_n_train_steps"] == 7  # the periodic one is listed last
    assert ck[0]["init_args"]["save_last"] is True
