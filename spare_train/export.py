"""``spare-train export CKPT OUT``: a Lightning checkpoint as a Hugging Face folder.

A ``PRMModule`` checkpoint becomes a PRM folder (:mod:`spare_train.prm.export`), a
``PolicyModule`` checkpoint a causal LM (:mod:`spare_train.policy.export`); one trained on
critique data a critic or refiner, with a model card giving its prompt (:mod:`spare_train.critique.export`). The checkpoint says
which it is (``spare_train_module``, written by :class:`spare_train.models.TrainingStateCheckpoint`);
it is loaded with ``weights_only=True`` and never names code to import.
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
) -> int:
    """Write a Hugging Face folder from a Lightning checkpoint of a PRMModule or a PolicyModule
    (a policy, or a critic / refiner when it was trained on critique data).

    Args:
        ckpt: the Lightning checkpoint (``.ckpt``).
        out: the output folder.
        merge: fold LoRA adapters into the weights (else an adapter is saved; full fine-tunes are
            always saved whole).
        dtype: weight dtype of the export (default: the training dtype).
    """
    checkpoint = load_checkpoint(ckpt)
    if checkpoint_kind(checkpoint) == "policy":
        from spare_train.critique.export import critique_state, export_critic
        from spare_train.policy.export import export_policy, policy_from_checkpoint

        policy = policy_from_checkpoint(checkpoint, dtype)
        merge = merge or policy.backbone_cfg.lora is None
        state = critique_state(checkpoint)
        if state is not None:  # trained on critique data: a critic or refiner with its model card
            export_critic(policy, out, state, merge=merge)
            print(f"exported {'critic' if state['mode'] == 'critique' else 'refiner'} to {out}")
            return 0
        export_policy(policy, out, merge=merge)
        print(f"exported policy to {out}")
        return 0
    from spare_train.prm.export import export_module, module_from_checkpoint

    module = module_from_checkpoint(checkpoint, dtype)
    export_module(module, Path(out), merge=merge or module.backbone_cfg.lora is None)
    print(f"exported PRM to {out}")
    return 0
