"""wandb: a recipe logs to a WandbLogger with its whole resolved config, an export is logged as a
model artifact, and each sweep file of recipes/sweeps/ runs as the wandb agent would run it.

Everything runs with ``WANDB_MODE=offline``: a run is then a ``run-ID.wandb`` file of records
(wandb's LevelDB-style log of protobuf ``Record`` messages), which :func:`read_records` reads back
to see what would have reached the server.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import wandb
import yaml

from spare_train.assets import resolve_bundled
from spare_train.cli import main
from spare_train.models.hf import load_checkpoint
from spare_train.policy.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))


# ---- reading an offline run ---------------------------------------------------------------------------
def read_records(run_dir: Path, timeout: float = 120) -> list:
    """Every ``Record`` of a finished offline run (folder ``wandb/offline-run-…``), in order. wandb's
    service writes the file behind the run's ``finish``: wait for the run's ``exit`` record."""
    deadline = time.monotonic() + timeout
    while True:
        records = _records(run_dir)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _records(run_dir: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B", path
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a record header never straddles a block: the rest is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: one record complete
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def run_config(records: list) -> dict:
    """The run's config as the server would hold it (``{key: value}``)."""
    config: dict = {}
    for r in records:
        items = r.run.config.update if r.WhichOneof("record_type") == "run" else (
            r.config.update if r.WhichOneof("record_type") == "config" else [])  # fmt: skip
        for item in items:
            key = item.key or ".".join(item.nested_key)
            config[key] = json.loads(item.value_json)
    return config


def history_keys(records: list) -> set[str]:
    return {item.key or "/".join(item.nested_key) for r in records if r.WhichOneof("record_type") == "history"
            for item in r.history.item}  # fmt: skip


def offline_runs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("offline-run-*"))


# ---- a recipe with the wandb fragment; an export as an artifact -----------------------------------------
@pytest.mark.slow
def test_recipe_logs_its_resolved_config_and_export_logs_an_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)
    recipe, fragment = ROOT / "recipes" / "prm" / "tiny.yaml", ROOT / "recipes" / "loggers" / "wandb.yaml"
    assert main(["fit", "--config", str(recipe), "--config", str(fragment),
                 "--trainer.logger.init_args.name=tiny-test", "--trainer.logger.init_args.group=tests",
                 "--trainer.logger.init_args.tags=[prm, tiny]", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
                 "--trainer.limit_val_batches=2", f"--trainer.default_root_dir={tmp_path / 'run'}"]) == 0  # fmt: skip
    wandb.finish()  # the logger leaves its run open until the process ends
    (fit_run,) = offline_runs(tmp_path / "runs")
    records = read_records(fit_run)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    named = (run.project, run.display_name, run.run_group, list(run.tags))
    assert named == ("spare-train", "tiny-test", "tests", ["prm", "tiny"])
    config = run_config(records)
    # the whole resolved recipe, not only the module's hyper-parameters
    assert config["trainer"]["max_steps"] == 2 and config["seed_everything"] == 0
    assert config["model"]["class_path"] == "spare_train.prm.PRMModule"
    assert config["model"]["init_args"]["lr"] == 3.0e-4 and config["data"]["init_args"]["batch_size"] == 16
    assert config["lr"] == 3.0e-4  # and Lightning's own log of the module's hyper-parameters
    assert "val/step/auroc" in history_keys(records)

    (ckpt,) = (tmp_path / "runs" / "spare-train").rglob("last.ckpt")  # SAVE_DIR/PROJECT/RUN_ID/checkpoints
    assert main(["export", str(ckpt), str(tmp_path / "prm-out"), "--wandb_project", "team/spare-exports"]) == 0
    (export_run,) = [r for r in offline_runs(tmp_path / "wandb")]
    artifacts = [r.artifact for r in read_records(export_run) if r.WhichOneof("record_type") == "artifact"]
    assert [(a.type, a.name, a.project, a.entity) for a in artifacts] == [("model", "prm-out", "spare-exports", "team")]
    files = {entry.path for entry in artifacts[0].manifest.contents}
    assert {"config.json", "model.safetensors", "spare_prm.json"} <= files, files
    assert json.loads(artifacts[0].metadata)["kind"] == "prm"


# ---- sweeps ------------------------------------------------------------------------------------------
def test_sweep_files_exist():
    assert {p.name for p in SWEEPS} >= {"prm-tiny.yaml", "offline-rl-tiny.yaml"}


def draw(parameters: dict, rng: random.Random) -> dict:
    """A point of a sweep's parameter space, by wandb's documented meaning of each spec."""
    point = {}
    for name, spec in parameters.items():
        dist = spec.get("distribution")
        if "value" in spec:
            point[name] = spec["value"]
        elif "values" in spec and dist in (None, "categorical"):
            point[name] = rng.choice(spec["values"])
        elif dist == "log_uniform_values":
            point[name] = float(spec["min"]) * (float(spec["max"]) / float(spec["min"])) ** rng.random()
        elif dist == "uniform":
            point[name] = rng.uniform(float(spec["min"]), float(spec["max"]))
        elif dist == "int_uniform":
            point[name] = rng.randint(int(spec["min"]), int(spec["max"]))
        else:
            raise NotImplementedError(f"{name}: teach draw() the spec {spec}")
    return point


def agent_command(sweep: dict, point: dict, run_id: str, folder: Path, monkeypatch) -> tuple[list[str], dict[str, str]]:
    """The command line and environment wandb's agent starts for one run of ``sweep`` with
    ``point``: its own ``Agent._command_run``, with the process launch recorded instead of done.
    The agent runs in ``folder`` (it writes the run's parameters under ``folder/wandb``)."""
    import wandb.wandb_agent as wa

    launched = {}

    class Recorder:
        def __init__(self, command=None, env=None, **kwargs):
            launched.update(command=command, env=env)

    # the agent sets the first two (undone after the test); the third is the wandb service an earlier
    # test of this process started, which the trial must not report to
    for key in ("WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SERVICE"):
        monkeypatch.delenv(key, raising=False)
    # what `wandb agent ENTITY/PROJECT/SWEEP_ID` sets before it starts runs
    monkeypatch.setenv("WANDB_SWEEP_ID", "localsweep")
    monkeypatch.setenv("WANDB_PROJECT", sweep["project"])
    monkeypatch.setenv("WANDB_DIR", str(folder))
    monkeypatch.setattr(wa, "AgentProcess", Recorder)
    agent = wa.Agent(api=None, queue=None, sweep_id="localsweep")
    agent._sweep_command = list(sweep["command"])
    args = {k: {"value": v} for k, v in point.items()}
    agent._command_run({"run_id": run_id, "program": sweep["program"], "args": args})
    return launched["command"], launched["env"]


#: test-only options appended after the agent's command: two steps, then a short validation
SHORT = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=2"]


def hparam(hparams: dict, key: str):
    """The module hyper-parameter a swept ``model.init_args.…`` key set. An objective is stored as
    ``{"name": …, **settings}`` (its class via the registry); ``init_args`` levels fold away."""
    path = key.removeprefix("model.init_args.").split(".")
    if path[0] == "objective" and path[-1] == "class_path":
        cls = OBJECTIVES[hparams["objective"]["name"]]
        return f"{cls.__module__}.{cls.__qualname__}"
    value = hparams
    for part in (p for p in path if p != "init_args"):
        value = value[part]
    return value


@pytest.mark.slow
@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_trial_runs_as_the_agent_runs_it(path, tmp_path, monkeypatch):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes") and sweep["metric"]["goal"] in ("maximize", "minimize")
    assert "${args}" in sweep["command"] and sweep["command"][sweep["command"].index("${args}") - 1] != "--config"
    assert (ROOT / sweep["command"][sweep["command"].index("--config") + 1]).is_file()
    assert all(key.startswith("model.init_args.") for key in sweep["parameters"]), "sweep module settings"

    point = draw(sweep["parameters"], random.Random(path.stem))
    command, env = agent_command(sweep, point, "trial0001", tmp_path, monkeypatch)
    assert command[:3] == ["/usr/bin/env", "spare-train", "fit"]
    assert command[-len(point) :] == [f"--{k}={v}" for k, v in point.items()]  # ${args}, as the agent spells them

    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # the command names recipes relative to the checkout
    env = {**env, "PATH": f"{Path(sys.executable).parent}:{env['PATH']}", "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    extra = [*SHORT, f"--trainer.default_root_dir={tmp_path / 'run'}"]
    assert not {a.split("=")[0][2:] for a in extra} & set(point)
    done = subprocess.run(command + extra, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # with a WandbLogger, checkpoints go to SAVE_DIR/PROJECT/RUN_ID/checkpoints
    (ckpt,) = (tmp_path / "runs" / "sweeps" / sweep["project"] / "trial0001").rglob("last.ckpt")
    hparams = load_checkpoint(ckpt)["hyper_parameters"]
    for key, value in point.items():
        assert hparam(hparams, key) == value, (key, hparam(hparams, key), value)
    (run_dir,) = offline_runs(tmp_path / "runs" / "sweeps" / "wandb")
    assert run_dir.name.endswith("-trial0001")  # the logger joined the run the agent started
    records = read_records(run_dir)
    assert sweep["metric"]["name"] in history_keys(records)
    config = run_config(records)
    for key, value in point.items():  # the resolved recipe in the run's config holds the swept values too
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    assert os.path.isfile(tmp_path / "wandb" / "sweep-localsweep" / "config-trial0001.yaml")
