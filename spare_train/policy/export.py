"""A trained ``PolicyModule`` as a Hugging Face causal LM (``spare-train export`` of a policy).

``OUT`` holds the policy (``merge``: adapters folded in; else a peft adapter naming its base
portably, see :mod:`spare_train.models.hf`) and its tokenizer, whose chat template is the prompt
the policy was trained on; ``docs/offline_rl.md`` shows the ``generate`` call. Frozen weights are
reloaded unquantised from the base model.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from spare_train.files import atomic_path
from spare_train.models.finite import check_weights
from spare_train.models.hf import init_args_from_checkpoint, make_readable, save_causal_lm


def policy_from_checkpoint(ckpt: dict[str, Any], dtype: str | None = None, trust_remote_code: bool = False) -> Any:
    """Rebuild the ``PolicyModule`` of a checkpoint (unquantised, trained tensors loaded; no
    reference model: an export needs none)."""
    from spare_train.models.checkpoint import trainable_names
    from spare_train.policy.module import PolicyModule

    hp = init_args_from_checkpoint(PolicyModule, ckpt, dtype, trust_remote_code)
    hp["reference"] = "none"
    module = PolicyModule(**hp)
    module.configure_model()
    result = module.load_state_dict(ckpt["state_dict"], strict=hp["backbone"].lora is None)
    if result.unexpected_keys:
        raise KeyError(f"checkpoint tensors the rebuilt policy lacks: {result.unexpected_keys[:5]}")
    missing = trainable_names(module) & set(result.missing_keys)
    if missing:
        raise KeyError(f"trained tensors the checkpoint lacks: {sorted(missing)[:5]}")
    return module.eval()


def export_policy(module: Any, out: str | Path, merge: bool = True) -> Path:
    """Write the policy as a Hugging Face folder (adapters merged when ``merge``; merging works
    on a copy, so the module keeps training with its adapters afterwards). Refuses non-finite
    weights; ``out`` appears only when complete and never holds code files."""
    from peft import PeftModel

    from spare_train.tokenize import load_tokenizer

    check_weights(module.policy, "to export", str(out))
    model = copy.deepcopy(module.policy) if merge and isinstance(module.policy, PeftModel) else module.policy
    trust = module.backbone_cfg.extra.get("trust_remote_code", False)
    with atomic_path(out) as tmp:
        save_causal_lm(model, load_tokenizer(module.tokenizer_name, trust), tmp, merge=merge, base=module.backbone_cfg.name_or_path)
        make_readable(tmp)
    return Path(out)
