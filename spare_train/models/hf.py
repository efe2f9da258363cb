"""Reading checkpoints and writing Hugging Face folders, shared by the PRM and policy exports.

Checkpoints and model folders are data, never code:

* checkpoints load with ``weights_only=True`` (no pickle runs);
* nothing in a checkpoint's hyper-parameters can turn on ``trust_remote_code`` or point the loader
  at another model: of ``backbone.extra`` only :data:`CHECKPOINT_EXTRA` is kept
  (:func:`checkpoint_backbone`), and ``fit/validate/test --ckpt_path`` keep the recipe's own model,
  tokenizer and loader options (:func:`checkpoint_cli_hparams`). The user opts in to running a
  model's code explicitly (``--trust_remote_code``, or ``backbone.extra`` in a recipe);
* an exported folder never carries code: :func:`remove_code_files` deletes ``*.py`` files and
  ``auto_map`` entries a base model's ``save_pretrained`` would copy along.

An adapter export names its base model portably (:func:`portable_base`): a hub id or a bundled
``tiny-*`` name as it is, a local folder as a path relative to the export folder. Our loaders
resolve that (:func:`resolve_base`, :func:`load_adapter`); plain peft users load the base
themselves and apply the adapter (``PeftModel.from_pretrained(base, OUT)``), as each export's
card shows. Exported files are readable by everyone the umask allows (:func:`make_readable`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

#: ``from_pretrained`` options a checkpoint's ``backbone.extra`` may carry; every other key
#: (``trust_remote_code``, ``code_revision``, ``config``, ``subfolder``, ``gguf_file``, …) is dropped
CHECKPOINT_EXTRA = frozenset({"revision", "low_cpu_mem_usage"})
#: the module classes whose checkpoints ``fit/validate/test --ckpt_path`` read hyper-parameters from
MODULE_CLASSES = {"PRMModule": "spare_train.prm.PRMModule", "PolicyModule": "spare_train.policy.PolicyModule"}
ADAPTER_CONFIG = "adapter_config.json"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded without unpickling arbitrary objects: a ``.ckpt`` file, or
    the folder a sharded FSDP2 run writes (consolidated in memory, optimiser states left out;
    :func:`spare_train.models.parallel.read_sharded_checkpoint`)."""
    if Path(path).is_dir():
        from spare_train.models.parallel import read_sharded_checkpoint

        return read_sharded_checkpoint(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def save_causal_lm(model: Any, tokenizer: Any, out: str | Path, merge: bool, base: str | None = None) -> Path:
    """Save a (possibly peft-wrapped) causal LM and its tokenizer as a Hugging Face folder.

    ``merge``: fold adapters (and trained new-token rows) into the weights; otherwise a peft model
    is saved as an adapter whose ``adapter_config.json`` names ``base`` (the backbone's
    ``name_or_path``) portably (:func:`record_base`). Always safetensors; never code files
    (:func:`remove_code_files`).
    """
    from peft import PeftModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel) and merge:
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    remove_code_files(out)
    if isinstance(model, PeftModel) and base is not None:
        record_base(out, base)
    return out


def remove_code_files(folder: str | Path) -> list[str]:
    """Delete ``*.py`` files and ``auto_map`` entries from an export folder; returns what went.

    ``save_pretrained`` copies a remote-code base model's modules next to the weights; an export
    is data that plain transformers loads by ``model_type``, so that code never travels with it.
    """
    folder, removed = Path(folder), []
    for f in sorted(folder.rglob("*.py")):
        f.unlink()
        removed.append(f.name)
    for f in sorted(folder.glob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(data, dict) and "auto_map" in data:
            del data["auto_map"]
            f.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            removed.append(f"{f.name}:auto_map")
    if removed:
        print(f"export: code removed from the folder (exports are data, not code): {', '.join(removed)}", file=sys.stderr)
    return removed


def checkpoint_backbone(value: Any, trust_remote_code: bool = False) -> dict[str, Any]:
    """A checkpoint's ``backbone`` hyper-parameters with ``extra`` cut to :data:`CHECKPOINT_EXTRA`
    (dropped keys are named on stderr); ``trust_remote_code`` is the caller's own opt-in."""
    bb = dict(value or {})
    extra = dict(bb.get("extra") or {})
    dropped = sorted(k for k in extra if k not in CHECKPOINT_EXTRA)
    if dropped:
        print(f"checkpoint: ignored backbone.extra {dropped} (a checkpoint cannot set loader options; "
              "pass --trust_remote_code to run a model's own code)", file=sys.stderr)  # fmt: skip
    bb["extra"] = {k: v for k, v in extra.items() if k in CHECKPOINT_EXTRA}
    if trust_remote_code:
        bb["extra"]["trust_remote_code"] = True
    return bb


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

    # ".." taken lexically: the export folder may not exist yet (its card is written before the
    # finished folder is renamed into place), and the OS cannot walk ".." out of a missing folder
    here = Path(os.path.normpath(Path(adapter_dir) / recorded))
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


def init_args_from_checkpoint(
    cls: type, ckpt: dict[str, Any], dtype: str | None = None, trust_remote_code: bool = False
) -> dict[str, Any]:
    """``cls``'s init args from a checkpoint's hyper-parameters, its backbone rebuilt unquantised
    and without gradient checkpointing (what an export needs), in ``dtype`` when given, with only
    safe loader options (:func:`checkpoint_backbone`)."""
    import inspect

    from spare_train.models.backbone import backbone_config

    params = inspect.signature(cls.__init__).parameters
    hp = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if k in params}
    bb = backbone_config(checkpoint_backbone(hp.get("backbone"), trust_remote_code))
    bb.quantization, bb.gradient_checkpointing = None, False
    if dtype:
        bb.dtype = dtype
    hp["backbone"] = bb
    return hp


def checkpoint_cli_hparams(ckpt: dict[str, Any], model_config: Any) -> dict[str, Any]:
    """What ``fit/validate/test --ckpt_path`` may take from a checkpoint's hyper-parameters.

    Lightning's CLI puts a checkpoint's hyper-parameters over the recipe's. Here the recipe keeps
    what decides which code and weights load: the module class (a checkpoint naming another class
    is refused, so no class path from a file is ever imported), ``backbone.name_or_path``,
    ``backbone.extra`` and ``tokenizer``. ``model_config``: the parsed ``model`` section.
    """
    hp = dict(ckpt.get("hyper_parameters") or {})
    hp.pop("_instantiator", None)
    class_path = hp.pop("_class_path", None)
    if not hp:
        return {}
    configured = _get(model_config, "class_path")
    if class_path is not None and class_path != configured:
        known = MODULE_CLASSES.get(str(class_path).rsplit(".", 1)[-1])
        if known is None or known.rsplit(".", 1)[-1] != str(configured).rsplit(".", 1)[-1]:
            from spare_train.report import DataError

            raise DataError("checkpoint_class", f"the checkpoint was written by {class_path!r}, but the "
                            f"config builds {configured!r}; give the matching recipe", "--ckpt_path")  # fmt: skip
    init = _get(model_config, "init_args")
    backbone = dict(hp.get("backbone") or {})
    mine = _get(init, "backbone")
    for key in ("name_or_path", "extra"):
        if mine is not None and _get(mine, key) is not None:
            backbone[key] = _plain(_get(mine, key))
        else:
            backbone.pop(key, None)
    if "extra" in (hp.get("backbone") or {}) and backbone.get("extra") is None:
        backbone["extra"] = {}
    hp["backbone"] = backbone
    tokenizer = _get(init, "tokenizer")
    if tokenizer is not None:
        hp["tokenizer"] = tokenizer
    else:
        hp.pop("tokenizer", None)
    return {"class_path": configured, "dict_kwargs": hp}


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    return obj.get(key) if hasattr(obj, "get") else getattr(obj, key, None)


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace (or anything) as plain dicts and lists."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    return value
