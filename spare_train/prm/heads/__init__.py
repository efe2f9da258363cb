"""PRM heads: the registry, the protocol every head follows, and the scoring path they share.

Every head maps the decoder's hidden states at the step-tag positions (``[B, S, H]``) to two
logits per step, ``[B, S, 2]`` ordered (incorrect, correct); the step score is the softmax
probability of *correct*. A head also knows how its trained PRM is exported, loaded back and
used from plain transformers (the model card's snippet), so adding a head is one file in this
folder plus its test:

* ``lm_tokens`` (:mod:`.lm_tokens`, Math-Shepherd / SPARE-PRM): the LM head's logits of two label
  tokens at the tag, read off two output-embedding rows (``[B, L, V]`` logits never exist).
* ``classifier`` (:mod:`.classifier`, Qwen2.5-Math-PRM / TRL): a new linear or two-layer head.

Packed batches (``data.pack``) carry ``position_ids`` and ``segment_ids``; :func:`body_hidden`
turns the segments into a block-diagonal causal mask, and :func:`gather_steps` reads each
example's tags from its row (``label_rows``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from spare_train.models.backbone import decoder_body, unwrap


class PRMHead(nn.Module):
    """What a head provides (subclasses register themselves in :data:`HEADS` by ``name``).

    ``body``: which transformers class training loads (``causal_lm`` keeps the LM head, ``body``
    the decoder alone). ``forward(hidden [B, S, H], model) -> [B, S, 2]`` logits.
    """

    name: ClassVar[str] = ""
    body: ClassVar[str] = "causal_lm"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.name:
            HEADS[cls.name] = cls

    @classmethod
    def create(cls, model: Any, tokenizer: Any, **options: Any) -> PRMHead:
        """A fresh head for training ``model`` (options: the PRMModule's head settings)."""
        raise NotImplementedError

    def info(self, tokenizer: Any) -> dict[str, Any]:
        """Head-specific entries of ``spare_prm.json``."""
        return {}

    def export(self, module: Any, out: Path, merge: bool) -> bool:
        """Write ``module``'s trained PRM to ``out``; return whether it is an adapter."""
        raise NotImplementedError

    @classmethod
    def load(cls, path: Path, info: dict[str, Any], tokenizer: Any, kwargs: dict[str, Any]) -> tuple[Any, PRMHead]:
        """Load an exported PRM folder: ``(model, head)``."""
        raise NotImplementedError

    @classmethod
    def snippet(cls, info: dict[str, Any]) -> tuple[list[str], str]:
        """For the model card: lines that load ``PATH`` with plain transformers/peft into ``tok``
        and ``model``, and one line that sets ``probs``, P(correct) at every token of ``ids``."""
        raise NotImplementedError


#: head name -> class (filled by the head modules on import)
HEADS: dict[str, type[PRMHead]] = {}


def get_head(name: str) -> type[PRMHead]:
    if name not in HEADS:
        raise ValueError(f"unknown PRM head {name!r}; choose from {sorted(HEADS)}")
    return HEADS[name]


# ------------------------------------------------------------------------------ scoring path
def packed_attention_mask(segment_ids: Tensor, attn_implementation: str, dtype: torch.dtype) -> Tensor:
    """A 4D block-diagonal causal mask ``[R, 1, L, L]`` from ``segment_ids`` ``[R, L]``.

    transformers uses a 4D mask as given: ``sdpa`` wants booleans (True = attend), ``eager`` an
    additive float mask. Padding positions attend to themselves only (no all-masked row, no NaN).
    ``flash_attention_2`` needs no mask: it reads packing from ``position_ids``.
    """
    seg = segment_ids
    L_ = seg.shape[1]
    causal = torch.ones(L_, L_, dtype=torch.bool, device=seg.device).tril()
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
    mask = (same & causal) | torch.eye(L_, dtype=torch.bool, device=seg.device)
    mask = mask[:, None]
    if attn_implementation == "eager":
        return torch.zeros(mask.shape, dtype=dtype, device=seg.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask


def gather_steps(hidden: Tensor, positions: Tensor, rows: Tensor | None = None) -> Tensor:
    """``hidden[rows[b], positions[b, s]]``: ``[R, L, H]`` x ``[B, S]`` -> ``[B, S, H]``.

    ``rows`` (``[B]``) is each example's row in a packed batch; unpacked, example ``b`` is row ``b``.
    """
    if rows is None:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
    return hidden[rows[:, None], positions]


def body_hidden(model: Any, batch: dict[str, Tensor]) -> Tensor:
    """Last hidden states ``[R, L, H]`` of the decoder body (after its final norm), no LM head.

    A packed batch (``segment_ids``) runs with its ``position_ids`` and a block-diagonal mask, so
    packed examples never attend to each other.
    """
    body = decoder_body(model)
    kwargs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "segment_ids" in batch:
        impl = getattr(unwrap(model).config, "_attn_implementation", None) or "sdpa"
        kwargs["position_ids"] = batch["position_ids"]
        if impl != "flash_attention_2":
            dtype = next(body.parameters()).dtype
            kwargs["attention_mask"] = packed_attention_mask(batch["segment_ids"], impl, dtype if dtype.is_floating_point else torch.float32)
    else:
        kwargs["attention_mask"] = batch.get("attention_mask")
    return body(**kwargs)[0]


def step_logits(model: Any, head: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The whole scoring path: body -> hidden at the tags -> head. ``[B, S, 2]``."""
    hidden = body_hidden(model, batch)
    return head(gather_steps(hidden, batch["label_positions"], batch.get("label_rows")), model)


class StepScorer(nn.Module):
    """:func:`step_logits` as one module, the root a sharding strategy wraps.

    FSDP2 gathers a group's weights in hooks around a module's ``__call__``. Calling the decoder
    body (``decoder_body(model)``) or reading the LM head's label rows directly would bypass the
    root's hooks and see shards; inside this module's forward the embeddings, final norm, LM head
    and classifier (the root group) are whole. Without sharding it is just the same function.
    """

    #: the batch entries the forward reads (only these go through the sharding hooks)
    INPUTS = ("input_ids", "attention_mask", "label_positions", "label_rows", "position_ids", "segment_ids")

    def __init__(self, model: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return step_logits(self.model, self.head, batch)


def step_scores(logits: Tensor) -> Tensor:
    """P(correct) per step: softmax over the (incorrect, correct) logits. ``[B, S, 2]`` -> ``[B, S]``."""
    return logits.float().softmax(-1)[..., 1]


def adapter_snippet(auto_class: str, config: bool = False, extra_imports: tuple[str, ...] = ()) -> list[str]:
    """Card lines that load an adapter export with plain transformers + peft: the base (``BASE``,
    set by the card) as ``auto_class``, its embeddings grown to the saved tokenizer, then the adapter."""
    kwargs = ", config=AutoConfig.from_pretrained(PATH)" if config else ""
    return [
        "from peft import PeftModel",
        f"from transformers import {'AutoConfig, ' if config else ''}{auto_class}, AutoTokenizer",
        *extra_imports,
        "tok = AutoTokenizer.from_pretrained(PATH)",
        f"base = {auto_class}.from_pretrained(BASE{kwargs})",
        "base.resize_token_embeddings(max(len(tok), base.get_input_embeddings().num_embeddings))  # rows for an added tag",
        "model = PeftModel.from_pretrained(base, PATH).eval()",
    ]


from spare_train.prm.heads import classifier, lm_tokens  # noqa: E402,F401  (register the heads)

__all__ = ["HEADS", "PRMHead", "StepScorer", "adapter_snippet", "body_hidden", "gather_steps", "get_head",
           "packed_attention_mask",
           "step_logits", "step_scores"]  # fmt: skip
