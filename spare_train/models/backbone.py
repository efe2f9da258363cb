"""Load a causal LM as a trainable backbone: dtype, LoRA (peft), 4/8-bit weights (bitsandbytes).

Shared by the PRM and offline-RL modules, so nothing here knows about heads or losses. What it
does, in order (each step is configuration of a transformers / peft object, not our own code):

1. ``from_pretrained`` with ``dtype``, ``attn_implementation`` and a ``BitsAndBytesConfig``.
   NF4 stores its packed weights in the compute dtype (``bnb_4bit_quant_storage``) so that FSDP
   can shard quantised and unquantised parameters alike.
2. Grow the embeddings when the tokenizer grew (an added step-tag token). Rows are only ever
   added, never cut: Qwen's embedding matrix is larger than its tokenizer on purpose.
3. ``prepare_model_for_kbit_training`` for quantised weights; gradient checkpointing with
   ``use_reentrant=False`` (works with frozen inputs and with FSDP activation checkpointing).
4. LoRA via ``get_peft_model``. Rows added in step 2 are made trainable with peft's
   ``trainable_token_indices`` (only those rows get gradients and are saved, not the whole
   embedding matrix as ``modules_to_save=["embed_tokens"]`` would).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoraSettings:
    """Low-rank adapters on the backbone (peft ``LoraConfig``).

    Args:
        r: rank of each adapter.
        alpha: scaling numerator; the update is scaled by ``alpha / r``.
        dropout: dropout on the adapter input.
        target_modules: ``"all-linear"`` (every linear layer but the output layer) or module names.
        modules_to_save: modules trained in full and saved next to the adapter (e.g. ``["lm_head"]``).
        train_new_tokens: make embedding rows added for new tokens (the step tag) trainable.
    """

    r: int = 16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    modules_to_save: list[str] | None = None
    train_new_tokens: bool = True


@dataclass
class BackboneConfig:
    """Which causal LM to train and how to hold it in memory.

    Args:
        name_or_path: a local folder, a hub id, or ``tiny-llama`` / ``tiny-qwen2`` (bundled
            random models for tests and the CPU recipe).
        dtype: weight dtype (and compute dtype for quantised weights).
        gradient_checkpointing: recompute activations in the backward pass (``use_reentrant=False``).
        lora: train low-rank adapters instead of all weights; ``None`` trains everything.
        quantization: ``nf4`` (QLoRA) or ``int8`` frozen weights via bitsandbytes; needs ``lora``
            and weights in a folder.
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2``…; ``None`` lets
            transformers choose.
    """

    name_or_path: str = "tiny-llama"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    lora: LoraSettings | None = None
    quantization: Literal["nf4", "int8"] | None = None
    attn_implementation: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """further ``from_pretrained`` keyword arguments (e.g. ``{"revision": "main"}``;
    ``{"trust_remote_code": true}`` is the opt-in to run code shipped with the model). Read from a
    checkpoint, only :data:`spare_train.models.hf.CHECKPOINT_EXTRA` keys are kept."""


def backbone_config(value: BackboneConfig | dict | None) -> BackboneConfig:
    """Accept a config, its ``asdict`` form (as stored in checkpoints) or ``None`` (defaults)."""
    if value is None:
        return BackboneConfig()
    if isinstance(value, BackboneConfig):
        return value
    d = dict(value)
    if isinstance(d.get("lora"), dict):
        d["lora"] = LoraSettings(**d["lora"])
    return BackboneConfig(**d)


def resolve_model_path(name_or_path: str) -> str:
    """``tiny-*`` names map to the bundled tiny models' folders; anything else is returned as is."""
    if name_or_path.startswith("tiny"):
        from spare_train.assets import resolve_model_name

        return str(resolve_model_name(name_or_path))
    return name_or_path


def quantization_config(cfg: BackboneConfig) -> Any:
    """The ``BitsAndBytesConfig`` for ``cfg.quantization`` (``None`` when unquantised)."""
    if cfg.quantization is None:
        return None
    from transformers import BitsAndBytesConfig

    dtype = DTYPES[cfg.dtype]
    if cfg.quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=dtype,
        )
    if cfg.quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"quantization must be None, 'nf4' or 'int8', not {cfg.quantization!r}")


def load_backbone(
    cfg: BackboneConfig,
    vocab_size: int | None = None,
    *,
    auto_class: Any = None,
) -> Any:
    """Load ``cfg`` as a trainable model; returns a ``PreTrainedModel`` or a peft ``PeftModel``.

    ``vocab_size``: the tokenizer's length; the embeddings grow to it when it is larger.
    ``auto_class``: ``AutoModelForCausalLM`` (default) or e.g. ``AutoModel`` for a headless body.
    """
    import transformers

    if cfg.quantization is not None and cfg.lora is None:
        raise ValueError("quantised weights are frozen: set backbone.lora to train adapters on them")
    auto_class = auto_class or transformers.AutoModelForCausalLM
    # code in the model's folder runs only on an explicit opt-in (never on the prompt transformers
    # shows when the flag is left unset)
    kwargs: dict[str, Any] = {"dtype": DTYPES[cfg.dtype], "trust_remote_code": False, **cfg.extra}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if (qc := quantization_config(cfg)) is not None:
        kwargs["quantization_config"] = qc
    model = auto_class.from_pretrained(resolve_model_path(cfg.name_or_path), **kwargs)
    model.config.use_cache = False

    old = model.get_input_embeddings().num_embeddings
    new_ids = list(range(old, vocab_size)) if vocab_size and vocab_size > old else []
    if new_ids:
        model.resize_token_embeddings(vocab_size)

    ckpt_kwargs = {"use_reentrant": False}
    if cfg.quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs=ckpt_kwargs,
        )
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)

    if cfg.lora is not None:
        from peft import LoraConfig, get_peft_model

        lc = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules,
            modules_to_save=cfg.lora.modules_to_save,
            trainable_token_indices=new_ids if (new_ids and cfg.lora.train_new_tokens) else None,
        )
        model = get_peft_model(model, lc)
    return model


def unwrap(model: Any) -> Any:
    """The transformers model inside a peft wrapper (adapters stay active), or ``model`` itself.

    peft is not imported for this (seconds at start-up, e.g. of ``spare-train score`` on a merged
    export): a model can only be a ``PeftModel`` once peft is loaded.
    """
    peft = sys.modules.get("peft")
    return model.get_base_model() if peft is not None and isinstance(model, peft.PeftModel) else model


def decoder_body(model: Any) -> Any:
    """The decoder stack of a causal LM (``model.model`` for Llama/Qwen2), final norm included.

    Calling it returns hidden states ``[B, L, H]`` without computing ``[B, L, V]`` logits.
    """
    return unwrap(model).get_decoder()
