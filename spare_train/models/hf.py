"""Reading checkpoints and writing Hugging Face folders, shared by the PRM and policy exports.

Checkpoints are loaded with ``weights_only=True``: a checkpoint is data, never code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded without unpickling arbitrary objects: a ``.ckpt`` file, or
    the folder a sharded FSDP2 run writes (consolidated in memory, optimiser states left out;
    :func:`spare_train.models.parallel.read_sharded_checkpoint`)."""
    if Path(path).is_dir():
        from spare_train.models.parallel import read_sharded_checkpoint

        return read_sharded_checkpoint(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_causal_lm(model: Any, tokenizer: Any, out: str | Path, merge: bool) -> Path:
    """Save a (possibly peft-wrapped) causal LM and its tokenizer as a Hugging Face folder.

    ``merge``: fold adapters (and trained new-token rows) into the weights; otherwise a peft model
    is saved as an adapter (``adapter_config.json`` names the base; load it with
    ``peft.AutoPeftModelForCausalLM``, which grows the embeddings to the saved tokenizer).
    Always safetensors.
    """
    from peft import PeftModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def init_args_from_checkpoint(cls: type, ckpt: dict[str, Any], dtype: str | None = None) -> dict[str, Any]:
    """``cls``'s init args from a checkpoint's hyper-parameters, its backbone rebuilt unquantised
    and without gradient checkpointing (what an export needs), in ``dtype`` when given."""
    import inspect

    from spare_train.models.backbone import backbone_config

    params = inspect.signature(cls.__init__).parameters
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k in params}
    bb = backbone_config(hp.get("backbone"))
    bb.quantization, bb.gradient_checkpointing = None, False
    if dtype:
        bb.dtype = dtype
    hp["backbone"] = bb
    return hp
