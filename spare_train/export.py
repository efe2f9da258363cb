"""``spare-train export CKPT OUT``: a Lightning checkpoint as a Hugging Face folder.

A ``PRMModule`` checkpoint becomes a PRM folder (:mod:`spare_train.prm.export`), a
``PolicyModule`` checkpoint a causal LM (:mod:`spare_train.policy.export`). The checkpoint says
which it is (``spare_train_module``, written by :class:`spare_train.models.TrainingStateCheckpoint`);
it is loaded with ``weights_only=True`` and never names code to import: its hyper-parameters
cannot turn on ``trust_remote_code`` or add loader options (``--trust_remote_code`` is the user's
own opt-in), and the folder written never holds code files (:mod:`spare_train.models.hf`).
A model whose weights are not all finite is refused (:mod:`spare_train.models.finite`), and the
folder appears only when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from spare_train.models.checkpoint import MODULE_KEY
from spare_train.models.hf import load_checkpoint


def checkpoint_kind(ckpt: dict[str, Any]) -> str:
    """``prm`` or ``policy``: which module wrote ``ckpt``."""
    name = ckpt.get(MODULE_KEY)
    if name is None:  # older checkpoints: recognise by hyper-parameters
        name = "PolicyModule" if "objective" in ckpt.get("hyper_parameters", {}) else "PRMModule"
    kinds = {"PRMModule": "prm", "PolicyModule": "policy"}
    if name not in kinds:
        raise ValueError(f"checkpoint written by {name!r}, which spare-train export does not know")
    return kinds[name]


def export(
    ckpt: str,
    out: str,
    merge: bool = False,
    dtype: Literal["float32", "bfloat16", "float16"] | None = None,
    trust_remote_code: bool = False,
    wandb_project: str | None = None,
) -> int:
    """Write a Hugging Face folder from a Lightning checkpoint of a PRMModule or a PolicyModule.

    Args:
        ckpt: the Lightning checkpoint (``.ckpt``).
        out: the output folder.
        merge: fold LoRA adapters into the weights (else an adapter is saved; full fine-tunes are
            always saved whole).
        dtype: weight dtype of the export (default: the training dtype).
        trust_remote_code: run code shipped with the base model (never taken from the checkpoint).
        wandb_project: also log the folder as a wandb ``model`` artifact in this project
            (``PROJECT`` or ``ENTITY/PROJECT``; ``WANDB_MODE=offline`` keeps it local).
    """
    checkpoint = load_checkpoint(ckpt)
    kind = checkpoint_kind(checkpoint)
    if kind == "policy":
        from spare_train.policy.export import export_policy, policy_from_checkpoint

        policy = policy_from_checkpoint(checkpoint, dtype, trust_remote_code)
        export_policy(policy, out, merge=merge or policy.backbone_cfg.lora is None)
        print(f"exported policy to {out}")
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
