"""A trained ``PRMModule`` as a Hugging Face folder (``spare-train export`` of a PRM checkpoint).

What lands in ``OUT``:

* the model, as ``model.safetensors`` (``merge``: LoRA folded into full weights) or as a peft
  adapter whose ``adapter_config.json`` names its base model portably
  (:func:`spare_train.models.hf.portable_base`; each head says how it saves:
  :meth:`spare_train.prm.heads.PRMHead.export`);
* the tokenizer, including a step-tag token that training added;
* ``spare_prm.json``: head convention, label/tag token ids and the prompt format, read by
  :func:`spare_train.prm.scoring.load_prm`;
* ``README.md``: a model card whose snippet scores an example with plain transformers
  (:mod:`spare_train.prm.card`).

Frozen weights are reloaded unquantised from the base model, so a QLoRA run exports
full-precision (``backbone.dtype``) weights.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from spare_train.files import atomic_path
from spare_train.models.finite import check_weights
from spare_train.models.hf import init_args_from_checkpoint, make_readable, portable_base, remove_code_files
from spare_train.prm.card import model_card

CARD_NAME = "spare_prm.json"


def module_from_checkpoint(ckpt: dict[str, Any], dtype: str | None = None, trust_remote_code: bool = False) -> Any:
    """Rebuild the ``PRMModule`` of a checkpoint with unquantised frozen weights, trained tensors loaded
    (loader options from the checkpoint are cut to safe ones: :func:`~spare_train.models.hf.checkpoint_backbone`)."""
    from spare_train.prm.module import PRMModule

    hp = init_args_from_checkpoint(PRMModule, ckpt, dtype, trust_remote_code)
    module = PRMModule(**hp)
    module.configure_model()
    result = module.load_state_dict(ckpt["state_dict"], strict=hp["backbone"].lora is None)
    if result.unexpected_keys:
        raise KeyError(f"checkpoint tensors the rebuilt model lacks: {result.unexpected_keys[:5]}")
    return module.eval()


def prm_info(module: Any, adapter: bool, out: str | Path) -> dict[str, Any]:
    """The ``spare_prm.json`` contents: everything scoring needs besides the weights."""
    tok, fmt = module.tokenizer, module.format_config
    return {
        "head": module.hparams.head,
        "classifier_type": None,
        "score": "softmax over (incorrect, correct) logits at each step-tag token; score = P(correct)",
        "format": asdict(fmt),
        "tag_id": tok.encode(fmt.step_tag, add_special_tokens=False)[0],
        "adapter": adapter,
        "base_model": portable_base(module.backbone_cfg.name_or_path, out),
        **module.head.info(tok),
    }


def export_module(module: Any, out: str | Path, merge: bool = True) -> Path:
    """Write ``module`` (a configured ``PRMModule``) to ``out``; see the module docstring.

    Refuses (:class:`~spare_train.models.finite.NonFiniteError`) a model with a NaN or infinite
    weight; ``out`` appears only when complete and never holds code files.
    """
    check_weights(module, "to export", str(out))
    out = Path(out)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        adapter = module.head.export(module, tmp, merge)
        info = prm_info(module, adapter, out)
        (tmp / CARD_NAME).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        (tmp / "README.md").write_text(model_card(info, str(out)))
        remove_code_files(tmp)
        make_readable(tmp)
    return out
