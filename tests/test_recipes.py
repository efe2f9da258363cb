"""Every shipped recipe (recipes/**/*.yaml, PRM and offline RL) parses through the LightningCLI,
and every strategy fragment (recipes/strategies/*.yaml) parses composed with a recipe.

Parsing resolves every class path and checks every option against the typed signatures, without
building models or reading data (``--print_config`` stops after validation). A fragment (a file
with no ``model``, e.g. recipes/loggers/wandb.yaml) parses after the tiny PRM recipe; wandb sweep
files (recipes/sweeps/, a ``command``) are not fit recipes and have their own test (test_wandb.py).
So the GPU-only fragments (FSDP1, bf16 mixed precision) are checked here even where no GPU runs them.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from spare_train.cli import lightning_cli as make_cli

ROOT = Path(__file__).resolve().parents[1]


def _kind(path: Path) -> str:
    data = yaml.safe_load(path.read_text()) or {}
    return "sweep" if "command" in data else "recipe" if "model" in data else "fragment"


YAMLS = sorted((ROOT / "recipes").rglob("*.yaml"))
RECIPES = [p for p in YAMLS if _kind(p) != "sweep"]
FULL = [p for p in YAMLS if _kind(p) == "recipe"]  # with a model and data: what a header command trains
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
    base = [] if _kind(path) == "recipe" else ["--config", str(ROOT / "recipes" / "prm" / "tiny.yaml")]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        make_cli(["fit", *base, "--config", str(path), "--print_config"])
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


def test_unknown_option_is_an_error(capsys):
    from spare_train.cli import main

    path = ROOT / "recipes" / "prm" / "tiny.yaml"
    assert main(["fit", "--config", str(path), "--model.init_args.no_such_option=1", "--print_config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no_such_option" in err and "Traceback" not in err


def header(path: Path) -> str:
    return "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_header_command_gives_the_data_the_recipe_needs(path):
    """A recipe whose training data is not bundled says, in its command, which option takes it."""
    data = yaml.safe_load(path.read_text())["data"]["init_args"]
    for key in ("train", "val"):
        if data.get(key) and not str(data[key]).startswith("bundled:"):
            assert f"--data.init_args.{key}=" in header(path), f"the header command lacks --data.init_args.{key}"


@pytest.mark.slow
@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_header_says_where_checkpoints_land_and_it_is_true(path, tmp_path, monkeypatch):
    """The `# Checkpoints:` line is where Lightning's ModelCheckpoint resolves its folder for this
    recipe (trainer, logger and callbacks as configured; CPU overrides only)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cli = make_cli(["--config", str(path), "--trainer.accelerator=cpu", "--trainer.devices=1",
                    "--trainer.precision=32-true"], run=False)  # fmt: skip
    ckpt = cli.trainer.checkpoint_callback
    assert type(ckpt).__name__ == "ModelCheckpoint" and ckpt.save_last, "the recipe must write last.ckpt"
    ckpt.setup(cli.trainer, cli.model, stage="fit")
    where = Path(ckpt.dirpath).relative_to(tmp_path) if Path(ckpt.dirpath).is_absolute() else Path(ckpt.dirpath)
    # the logger's version is known only when a run starts: version_0 here (the next free one), a
    # wandb run id (None until wandb starts)
    stated = str(where / "last.ckpt").replace("version_0", "version_N").replace("version_None", "<wandb run id>")
    assert f"# Checkpoints: {stated}" in header(path)


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
