"""``spare-train slurm submit``: a recipe as a SLURM job, checked before it is queued.

The job scripts are the templates of ``slurm/`` (``one-node.sbatch``, ``multi-node.sbatch``,
``sweep-agents.sbatch``; shipped in the package as ``spare_train/launch/templates``). Their
``{{name}}`` fields are filled in here; everything else in them is plain sbatch and bash, so what
runs is what ``--dry-run`` prints. Before ``sbatch`` sees the script, the recipe (with its
fragments and the extra fit options) is resolved by the same CLI the job runs, and its
``trainer.num_nodes`` / ``trainer.devices`` / ``trainer.accelerator`` are checked against the
allocation: SLURM starts one process per task, Lightning expects one per device, and a mismatch
otherwise surfaces as a hang or an error after the job waited in the queue.

``--gpus-per-node 0`` asks for CPU tasks instead (``--tasks-per-node`` of them per node, gloo);
the tests run the templates that way on a one-node SLURM cluster.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

TEMPLATES = Path(__file__).with_name("templates")
FIELD = re.compile(r"\{\{(\w+)\}\}")


class SubmitError(ValueError):
    """The job would not run as asked: said before anything is queued."""


# ---- the allocation against the recipe -------------------------------------------------------------
@dataclass(frozen=True)
class Allocation:
    """What the job asks SLURM for: ``nodes`` × ``tasks_per_node`` processes, ``gpus_per_node``
    GPUs on each node (0: CPU tasks)."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int


def devices_per_node(trainer: dict[str, Any], gpus_per_node: int) -> int:
    """How many processes per node Lightning will expect from ``trainer.devices``.

    ``"auto"`` / ``-1`` mean every visible GPU (the ones SLURM gave the task) or one CPU process;
    a list or ``"0,1"`` names devices one by one.
    """
    raw, accelerator = trainer.get("devices", "auto"), str(trainer.get("accelerator", "auto"))
    if isinstance(raw, (list, tuple)):
        return len(raw)
    if isinstance(raw, str) and "," in raw:
        return len([d for d in raw.split(",") if d.strip()])
    if raw in ("auto", -1, "-1", None):
        return gpus_per_node if gpus_per_node and accelerator in ("auto", "gpu", "cuda") else 1
    return int(raw)


def check_allocation(trainer: dict[str, Any], alloc: Allocation) -> None:
    """Raise :class:`SubmitError` naming every way the recipe's trainer and the allocation disagree,
    and the fit options that make them agree."""
    accelerator = str(trainer.get("accelerator", "auto"))
    problems, fixes = [], []
    if alloc.gpus_per_node == 0 and accelerator in ("gpu", "cuda"):
        problems.append(f"the recipe trains on GPUs (trainer.accelerator: {accelerator}) but the job asks for "
                        "--gpus-per-node 0")  # fmt: skip
        fixes.append("--trainer.accelerator=cpu")
    if alloc.gpus_per_node > 0 and accelerator == "cpu":
        problems.append(f"the job asks for {alloc.gpus_per_node} GPU(s) per node but the recipe trains on the CPU "
                        "(trainer.accelerator: cpu)")  # fmt: skip
        fixes.append("--trainer.accelerator=gpu")
    devices = devices_per_node(trainer, alloc.gpus_per_node)
    if devices != alloc.tasks_per_node:
        per_node = f"--gpus-per-node {alloc.gpus_per_node}" + (
            "" if alloc.gpus_per_node else f", --tasks-per-node {alloc.tasks_per_node}")
        problems.append(f"the recipe runs {devices} device(s) per node (trainer.devices: {trainer.get('devices')!r}) "
                        f"but the job starts {alloc.tasks_per_node} task(s) per node (one per GPU: {per_node}); Lightning "
                        "runs one process per device")  # fmt: skip
        fixes.append(f"--trainer.devices={alloc.tasks_per_node}")
    nodes = int(trainer.get("num_nodes") or 1)
    if nodes != alloc.nodes:
        problems.append(f"the recipe trains on {nodes} node(s) (trainer.num_nodes: {nodes}) but the job asks for "
                        f"--nodes {alloc.nodes}")  # fmt: skip
        fixes.append(f"--trainer.num_nodes={alloc.nodes}")
    if problems:
        raise SubmitError("; ".join(problems) + ". Change the recipe or the job, or add fit options after `--`: "
                          f"`-- {' '.join(fixes)}`")  # fmt: skip


def resolve_recipe(fit_args: list[str]) -> dict[str, Any]:
    """The recipe as ``spare-train fit`` will see it (``--print_config`` of the same arguments)."""
    from spare_train.cli import lightning_cli, resolve_config_args, user_errors

    out, err = io.StringIO(), io.StringIO()
    argv = mock.patch.object(sys, "argv", sys.argv[:1])  # Lightning warns when it sees two command lines
    with argv, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            lightning_cli(["fit", *resolve_config_args(fit_args), "--print_config"])
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise SubmitError(f"the recipe does not parse:\n{err.getvalue().strip()}") from None
        except user_errors() as error:
            raise SubmitError(f"the recipe does not parse:\n{error}") from None
    return yaml.safe_load(out.getvalue())


# ---- rendering ---------------------------------------------------------------------------------------
def render(template: str, **fields: Any) -> str:
    """Fill every ``{{name}}`` of ``template`` (a file in ``slurm/`` or its text); a field left
    without a value is an error, an unused value too."""
    text = (TEMPLATES / template).read_text() if (TEMPLATES / template).is_file() else template
    names = set(FIELD.findall(text))
    if names - set(fields) or set(fields) - names:
        raise KeyError(f"template fields {sorted(names)} != values {sorted(fields)}")
    text = FIELD.sub(lambda m: str(fields[m.group(1)]), text)
    return re.sub(r"\n{3,}", "\n\n", text.replace("\n\n#SBATCH", "\n#SBATCH"))


def sbatch_options(gpus_per_node: int, cpus_per_task: int | None, partition: str | None, account: str | None,
                   extra: list[str]) -> str:  # fmt: skip
    """The optional ``#SBATCH`` lines, one per option that is set."""
    lines = [f"--gpus-per-node={gpus_per_node}" if gpus_per_node else None,
             f"--cpus-per-task={cpus_per_task}" if cpus_per_task else None,
             f"--partition={partition}" if partition else None,
             f"--account={account}" if account else None, *extra]  # fmt: skip
    return "\n".join(f"#SBATCH {line}" for line in lines if line)


def job_name_of(configs: list[str]) -> str:
    """``spare-<recipe file stem>``, in characters every SLURM tool and log name accepts."""
    stem = Path(configs[0].split(":", 1)[-1]).stem if configs else "fit"
    return "spare-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)


def sweep_fit_args(sweep_file: str) -> list[str]:
    """The fit options a wandb sweep file's ``command`` passes to ``spare-train fit`` (macros such
    as ``${args}`` left out): what every trial's recipe is made of, before the swept values."""
    command = [str(c) for c in (yaml.safe_load(Path(sweep_file).read_text()) or {}).get("command", [])]
    if "fit" not in command:
        raise SubmitError(f"{sweep_file}: the sweep's command must run `spare-train fit …`")
    return [c for c in command[command.index("fit") + 1 :] if not c.startswith("${")]


# ---- the command ---------------------------------------------------------------------------------------
def submit(
    config: list[str] | None = None,
    nodes: int = 1,
    gpus_per_node: int = 1,
    tasks_per_node: int = 1,
    cpus_per_task: int | None = None,
    time: str = "24:00:00",
    partition: str | None = None,
    account: str | None = None,
    job_name: str | None = None,
    log_dir: str | None = None,
    sbatch: list[str] | None = None,
    sweep: str | None = None,
    sweep_id: str | None = None,
    agents: int = 1,
    parallel: int | None = None,
    dry_run: bool = False,
    fit_args: list[str] | None = None,
) -> int:
    """Render a ``slurm/`` template for a recipe, check it against the recipe and submit it.

    Args:
        config: the recipe, then any fragments (``--config`` once each, as for ``spare-train fit``).
        nodes: nodes to train on (``multi-node.sbatch`` when more than one).
        gpus_per_node: GPUs per node, one task each; 0 runs CPU tasks (testing; see tasks_per_node).
        tasks_per_node: processes per node when gpus_per_node is 0.
        cpus_per_task: CPU cores per task (data loading, tokenisation); unset: the cluster's default.
        time: time limit (``HH:MM:SS`` or ``D-HH:MM:SS``); SIGUSR1 comes 90 s before it.
        partition: the SLURM partition.
        account: the SLURM account to charge.
        job_name: the job's name (default: ``spare-<recipe file stem>``).
        log_dir: where job and per-task logs go (default: ``<trainer.default_root_dir>/slurm``).
        sbatch: further sbatch options, each one ``#SBATCH`` line (e.g. ``["--qos=high"]``).
        sweep: a wandb sweep file (``recipes/sweeps/*.yaml``): submit agents for it
            (``sweep-agents.sbatch``); its command names the recipe, so no ``--config``.
        sweep_id: ``ENTITY/PROJECT/SWEEP_ID`` of that sweep, as ``wandb sweep FILE`` printed it.
        agents: array tasks, one agent and one trial each.
        parallel: how many array tasks may run at once (``--array=0-N%parallel``).
        dry_run: print the script and submit nothing.
        fit_args: options for ``spare-train fit`` (what follows ``--`` on the command line).
    """
    fit_args = list(fit_args or [])
    if sweep:
        if config:
            raise SubmitError("--sweep runs the recipe its sweep file names: give no --config")
        if not sweep_id or sweep_id.count("/") != 2:
            raise SubmitError("--sweep needs --sweep-id ENTITY/PROJECT/SWEEP_ID (`wandb sweep FILE` prints it)")
        if fit_args:
            raise SubmitError("with --sweep, fit options belong in the sweep file's command (the agent runs it)")
        recipe_args = sweep_fit_args(sweep)
    elif not config:
        raise SubmitError("give the recipe with --config RECIPE (and any fragments after it)")
    else:
        recipe_args = [a for c in config for a in ("--config", c)] + fit_args
    if min(nodes, tasks_per_node, agents) < 1 or gpus_per_node < 0:
        raise SubmitError("--nodes, --tasks-per-node and --agents must be at least 1, --gpus-per-node at least 0")
    if sweep and nodes != 1:
        raise SubmitError("a sweep trial runs on one node (--nodes 1)")
    alloc = Allocation(nodes, gpus_per_node or tasks_per_node, gpus_per_node)
    recipe = resolve_recipe(recipe_args)
    check_allocation(recipe.get("trainer") or {}, alloc)

    root = Path(recipe["trainer"].get("default_root_dir") or ".").absolute()
    logs = Path(log_dir).absolute() if log_dir else root / "slurm"
    fields = dict(
        job_name=job_name or job_name_of(config or [sweep]),
        tasks_per_node=alloc.tasks_per_node,
        sbatch_options=sbatch_options(gpus_per_node, cpus_per_task, partition, account, list(sbatch or [])),
        time=time, workdir=shlex.quote(str(Path.cwd())), log_dir=shlex.quote(str(logs)),
        python=shlex.quote(sys.executable),
    )  # fmt: skip
    if sweep:
        last = agents - 1
        script = render("sweep-agents.sbatch", **fields, sweep_id=shlex.quote(sweep_id or ""),
                        array=f"0-{last}%{parallel}" if parallel else f"0-{last}",
                        runs_dir=shlex.quote(str(root / "sweeps")),
                        trial_script=shlex.quote(str(TEMPLATES / "sweep-trial.sh")))  # fmt: skip
    else:
        args = " ".join(shlex.quote(a) for a in recipe_args)
        template = "one-node.sbatch" if nodes == 1 else "multi-node.sbatch"
        script = render(template, **fields, fit_args=args, **({"nodes": nodes} if nodes > 1 else {}))
    if dry_run:
        print(script, end="")
        return 0
    if shutil.which("sbatch") is None:
        raise SubmitError("sbatch not found: submit from a SLURM login node (or print the script with --dry-run)")
    logs.mkdir(parents=True, exist_ok=True)  # sbatch does not create the folder of --output
    done = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if done.returncode != 0:
        raise SubmitError(f"sbatch failed: {done.stderr.strip()}")
    job_id = done.stdout.strip().split(";")[0]
    print(job_id)
    print(f"logs: {logs}/", file=sys.stderr)
    return 0


def split_fit_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """``submit`` options and the fit options after ``--``; ``--gpus-per-node`` is accepted for
    ``--gpus_per_node`` (sbatch's spelling), and ``--config`` may be given once per file."""
    own, fit = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    out, configs = [], []
    for i, arg in enumerate(own):
        if arg.startswith("--"):
            name, eq, value = arg.partition("=")
            arg = name.replace("-", "_").replace("__", "--", 1) + eq + value
        if arg == "--config" or (i and own[i - 1] == "--config"):
            if arg != "--config":
                configs.append(arg)
            continue
        if arg.startswith("--config="):
            configs.append(arg.partition("=")[2])
            continue
        out.append(arg)
    return (["--config", yaml.safe_dump(configs, default_flow_style=True).strip()] if configs else []) + out, fit
