"""``spare-train export CKPT OUT``: a Lightning checkpoint as a Hugging Face folder.

A ``PRMModule`` checkpoint becomes a PRM folder (:mod:`spare_train.prm.export`), a
``PolicyModule`` checkpoint a causal LM (:mod:`spare_train.policy.export`); one trained on
critique data a critic or refiner, with a model card giving its prompt (:mod:`spare_train.critique.export`). The checkpoint says
which it is (``spare_train_module``, written by :class:`spare_train.models.TrainingStateCheckpoint`);
it is loaded with ``weights_only=True`` and never names code to import: its hyper-parameters
cannot turn on ``trust_remote_code`` or add loader options (``--trust_remote_code`` is the user's
own opt-in), and the folder written never holds code files (:mod:`spare_train.models.hf`).
A model whose weights are not all finite is refused (:mod:`spare_train.models.finite`), and the
folder appears only when complete.

What a user may get wrong is checked before anything is built (:func:`read_checkpoint`,
:func:`check_target`) and reported as a :class:`~spare_train.report.DataError`: a file that is not
a Lightning checkpoint (a folder, a ``.safetensors`` file, anything torch cannot read as plain
data), and an ``OUT`` that already holds files. ``--overwrite`` replaces an earlier export's
folder completely (no stale weights of another kind are left), only once the new model is
written (:func:`spare_train.files.atomic_path` swaps the finished folder in).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from spare_train.models.checkpoint import MODULE_KEY
from spare_train.models.hf import load_checkpoint
from spare_train.report import DataError

#: files that mark a folder as an earlier export (what ``--overwrite`` may replace)
EXPORT_MARKERS = ("config.json", "adapter_config.json", "spare_prm.json")
WHERE_CHECKPOINTS = "`spare-train fit` writes them under runs/<recipe>/lightning_logs/version_N/checkpoints/"


def read_checkpoint(path: str) -> dict[str, Any]:
    """The Lightning checkpoint at ``path``, or a ``DataError`` that says what the file is instead."""
    p = Path(path)
    if not p.exists():
        raise DataError("missing_checkpoint", f"no such file ({WHERE_CHECKPOINTS})", path)
    if p.is_dir() and (p / ".metadata").is_file():  # the shard folder of an FSDP2 run
        try:
            return load_checkpoint(p)
        except Exception as err:  # a folder that only looks like one
            raise DataError("not_a_checkpoint", f"a checkpoint shard folder torch cannot read ({type(err).__name__}: {err})",
                            path) from None  # fmt: skip
    if p.is_dir():
        kind = "an exported model folder" if any((p / m).is_file() for m in EXPORT_MARKERS) else "a folder"
        found = sorted(p.rglob("*.ckpt"))
        hint = f"; checkpoints in it: {', '.join(map(str, found[:3]))}" if found else f" ({WHERE_CHECKPOINTS})"
        raise DataError("not_a_checkpoint", f"{kind}, not a checkpoint file{hint}", path)
    with p.open("rb") as f:
        head = f.read(9)
    if p.suffix == ".safetensors" or head[8:9] == b"{":
        raise DataError("not_a_checkpoint", "a safetensors weights file; export reads the Lightning checkpoint "
                        f"(.ckpt) of a training run ({WHERE_CHECKPOINTS})", path)  # fmt: skip
    try:
        ckpt = load_checkpoint(p)
    except Exception as err:  # any parse failure means "not a checkpoint"; nothing is ever unpickled unsafely
        raise DataError("not_a_checkpoint", "torch cannot read it as a plain-data checkpoint "
                        f"({type(err).__name__}); give the .ckpt of a training run", path) from None  # fmt: skip
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise DataError("not_a_checkpoint", "a torch file without a state_dict, not a Lightning checkpoint", path)
    return ckpt


def check_target(out: str, overwrite: bool) -> None:
    """``out`` is a new or empty folder, or (``overwrite``) an earlier export's folder."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise DataError("export_target", "is a file; give a folder to write the model into", out)
    if not p.is_dir() or not any(p.iterdir()):
        return
    if not overwrite:
        raise DataError("export_target", "the folder is not empty; choose a new folder, or pass --overwrite to "
                        "replace an earlier export in it", out)  # fmt: skip
    if not any((p / m).is_file() for m in EXPORT_MARKERS) or (p / ".git").exists() or Path.cwd().resolve().is_relative_to(p.resolve()):
        raise DataError("export_target", "--overwrite replaces an earlier export's folder, and this one is not "
                        f"(no {' / '.join(EXPORT_MARKERS)}, or it holds a repository or the current folder)", out)  # fmt: skip


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``prm`` or ``policy``: which module wrote ``ckpt``."""
    name = ckpt.get(MODULE_KEY)
    if name is None:  # older checkpoints: recognise by hyper-parameters
        name = "PolicyModule" if "objective" in ckpt.get("hyper_parameters", {}) else "PRMModule"
    kinds = {"PRMModule": "prm", "PolicyModule": "policy"}
    if name not in kinds:
        raise DataError("unknown_checkpoint", f"written by {name!r}, which spare-train export does not know")
    return kinds[name]


def export(
    ckpt: str,
    out: str,
    merge: bool = False,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    trust_remote_code: bool = False,
    wandb_project: str | None = None,
    overwrite: bool = False,
) -> int:
    """Write a Hugging Face folder from a Lightning checkpoint of a PRMModule or a PolicyModule.

    A PolicyModule trained on critique data is exported as a critic or refiner, with a model card
    that gives its prompt.

    Args:
        ckpt: the Lightning checkpoint of a training run: a ``.ckpt`` file, or the folder of shards
            an FSDP2 run with ``save_distributed_checkpoint: true`` writes.
        out: the output folder (new or empty).
        merge: fold LoRA adapters into the weights (else an adapter is saved; full fine-tunes are
            always saved whole).
        dtype: weight dtype of the export (default: the training dtype).
        trust_remote_code: run code shipped with the base model (never taken from the checkpoint).
        wandb_project: also log the folder as a wandb ``model`` artifact in this project
            (``PROJECT`` or ``ENTITY/PROJECT``; ``WANDB_MODE=offline`` keeps it local).
        overwrite: replace the contents of ``out`` when it holds an earlier export.
    """
    checkpoint = read_checkpoint(ckpt)
    kind = checkpoint_kind(checkpoint)
    check_target(out, overwrite)
    if kind == "policy":
        from spare_train.critique.export import critique_state, export_critic
        from spare_train.policy.export import export_policy, policy_from_checkpoint

        policy = policy_from_checkpoint(checkpoint, dtype, trust_remote_code)
        merge = merge or policy.backbone_cfg.lora is None
        state = critique_state(checkpoint)
        if state is not None:  # trained on critique data: a critic or refiner with its model card
            kind = "critic" if state["mode"] == "critique" else "refiner"
            export_critic(policy, out, state, merge=merge)
        else:
            export_policy(policy, out, merge=merge)
        print(f"exported {kind} to {out}")
    else:
        from spare_train.prm.export import export_module, module_from_checkpoint

        module = module_from_checkpoint(checkpoint, dtype, trust_remote_code)
        export_module(module, Path(out), merge=merge or module.backbone_cfg.lora is None)
        print(f"exported PRM to {out}")
    if wandb_project:
        from spare_train.launch.tracking import log_model_artifact

        meta = {"kind": kind, "checkpoint": str(Path(ckpt).resolve()), "global_step": checkpoint.get("global_step")}
        print(f"logged wandb artifact {log_model_artifact(out, wandb_project, metadata=meta)!r}")
    return 0
