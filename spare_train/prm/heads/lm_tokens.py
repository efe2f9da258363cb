"""Head A, ``lm_tokens`` (Math-Shepherd / SPARE-PRM): P(``"+"``) among ``"-"``/``"+"`` at the tag.

It has no parameters of its own: training moves the backbone to put mass on ``"+"`` after a
correct step and on ``"-"`` after a wrong one. Only the two output-embedding rows (and bias)
are read, then the model's logit scale / soft-capping when it has one, so ``[B, L, V]`` logits
never exist (for a 151k vocabulary, 8 sequences of 512 tokens that would be 2.5 GB of float32).
Exports as the backbone's ordinary ``*ForCausalLM`` (merged) or a peft causal-LM adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spare_train.models.backbone import unwrap
from spare_train.prm.heads import PRMHead, adapter_snippet


def label_token_ids(tokenizer: Any, label_tokens: tuple[str, str] | list[str]) -> tuple[int, int]:
    """Ids of the (incorrect, correct) label strings; each must be exactly one existing token."""
    ids = []
    for tok in label_tokens:
        enc = tokenizer.encode(tok, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"label token {tok!r} is {len(enc)} tokens {enc}; pick single-token labels")
        ids.append(enc[0])
    if ids[0] == ids[1]:
        raise ValueError(f"label tokens {tuple(label_tokens)} map to the same id {ids[0]}")
    return ids[0], ids[1]


class LMTokenHead(PRMHead):
    """Logits of two vocabulary tokens at each step tag, read off the backbone's own LM head."""

    name = "lm_tokens"
    body = "causal_lm"

    def __init__(self, neg_id: int, pos_id: int, label_tokens: tuple[str, str] = ("-", "+")) -> None:
        super().__init__()
        self.neg_id, self.pos_id = int(neg_id), int(pos_id)
        self.label_tokens = tuple(label_tokens)

    @classmethod
    def create(cls, model: Any, tokenizer: Any, label_tokens: tuple[str, str] = ("-", "+"), **_: Any) -> LMTokenHead:
        return cls(*label_token_ids(tokenizer, label_tokens), label_tokens=tuple(label_tokens))

    def forward(self, hidden: Tensor, model: Any) -> Tensor:
        lm = unwrap(model)
        out = lm.get_output_embeddings()
        ids = torch.tensor([self.neg_id, self.pos_id], device=hidden.device)
        weight = out.weight[ids]
        bias = out.bias[ids] if getattr(out, "bias", None) is not None else None
        logits = F.linear(hidden.to(weight.dtype), weight, bias).float()
        config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        if (scale := getattr(config, "logit_scale", None)) is not None:
            logits = logits * scale
        if cap := getattr(config, "final_logit_softcapping", None):
            logits = torch.tanh(logits / cap) * cap
        return logits

    def info(self, tokenizer: Any) -> dict[str, Any]:
        return {"label_tokens": list(self.label_tokens), "label_token_ids": [self.neg_id, self.pos_id]}

    def export(self, module: Any, out: Path, merge: bool) -> bool:
        from peft import PeftModel

        from spare_train.models.hf import save_causal_lm

        save_causal_lm(module.model, module.tokenizer, out, merge, base=module.backbone_cfg.name_or_path)
        return isinstance(module.model, PeftModel) and not merge

    @classmethod
    def load(cls, path: Path, info: dict[str, Any], tokenizer: Any, kwargs: dict[str, Any]) -> tuple[Any, PRMHead]:
        from transformers import AutoModelForCausalLM

        if info["adapter"]:
            from spare_train.models.hf import load_adapter

            model = load_adapter(path, AutoModelForCausalLM, len(tokenizer), kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        return model, cls(*info["label_token_ids"], label_tokens=tuple(info["label_tokens"]))

    @classmethod
    def snippet(cls, info: dict[str, Any]) -> tuple[list[str], str]:
        neg, pos = info["label_token_ids"]
        probs = f"probs = model(ids).logits[0][:, [{neg}, {pos}]].softmax(-1)[:, 1]  # P(correct) at every token"
        if info["adapter"]:
            return adapter_snippet("AutoModelForCausalLM"), probs
        load = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                "tok, model = AutoTokenizer.from_pretrained(PATH), AutoModelForCausalLM.from_pretrained(PATH).eval()"]
        return load, probs

