"""Reading checkpoints and writing Hugging Face folders, shared by the PRM and policy exports.

Checkpoints are loaded with ``weights_only=True``: a checkpoint is data, never code.

An adapter export names its base model portably (:func:`portable_base`): a hub id or a bundled
``tiny-*`` name as it is, a local folder as a path relative to the export folder. Our loaders
resolve that (:func:`resolve_base`, :func:`load_adapter`); plain peft users load the base
themselves and apply the adapter (``PeftModel.from_pretrained(base, OUT)``), as each export's
card shows. Exported files are readable by everyone the umask allows (:func:`make_readable`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

ADAPTER_CONFIG = "adapter_config.json"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_causal_lm(model: Any, tokenizer: Any, out: str | Path, merge: bool, base: str | None = None) -> Path:
    """Save a (possibly peft-wrapped) causal LM and its tokenizer as a Hugging Face folder.

    ``merge``: fold adapters (and trained new-token rows) into the weights; otherwise a peft model
    is saved as an adapter whose ``adapter_config.json`` names ``base`` (the backbone's
    ``name_or_path``) portably (:func:`record_base`). Always safetensors.
    """
    from peft import PeftModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if isinstance(model, PeftModel) and base is not None:
        record_base(out, base)
    return out


def portable_base(name_or_path: str, out: str | Path) -> str:
    """How an export in ``out`` names its base: an existing local folder as a path relative to
    ``out``; anything else (a hub id, ``tiny-llama``) unchanged."""
    local = Path(name_or_path).expanduser()
    if not local.is_dir():
        return name_or_path
    return os.path.relpath(local.resolve(), Path(out).resolve())


def record_base(out: str | Path, name_or_path: str) -> None:
    """Write :func:`portable_base` into ``out``'s ``adapter_config.json`` (peft writes the resolved path)."""
    path = Path(out) / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = portable_base(name_or_path, out)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def resolve_base(adapter_dir: str | Path, recorded: str) -> str:
    """The loadable base of an adapter in ``adapter_dir`` that recorded ``recorded``: ``tiny-*``
    names map to the bundled models, a relative path is taken from ``adapter_dir`` when that
    folder exists there, anything else (a hub id, an absolute path) is returned as is."""
    from spare_train.models.backbone import resolve_model_path

    here = Path(adapter_dir) / recorded
    if not Path(recorded).is_absolute() and here.is_dir():
        return str(here.resolve())
    return resolve_model_path(recorded)


def load_adapter(path: str | Path, auto_class: Any, vocab: int, kwargs: dict[str, Any], config: Any = None) -> Any:
    """An adapter export: its base (:func:`resolve_base`) loaded with ``auto_class`` (and
    ``config``), the embeddings grown to ``vocab`` as ``AutoPeftModel*`` does, then peft."""
    from peft import PeftConfig, PeftModel

    base_path = resolve_base(path, PeftConfig.from_pretrained(path).base_model_name_or_path)
    base = auto_class.from_pretrained(base_path, **({"config": config} if config is not None else {}), **kwargs)
    if vocab > base.get_input_embeddings().num_embeddings:  # only grow, as AutoPeftModel does
        base.resize_token_embeddings(vocab)
    return PeftModel.from_pretrained(base, path)


def make_readable(folder: str | Path) -> None:
    """Give every file in ``folder`` the mode a new file gets under the umask (safetensors writes
    its files ``0600``; an export is meant to be shared like any other output)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in Path(folder).rglob("*"):
        if f.is_file():
            f.chmod(0o666 & ~umask)


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
