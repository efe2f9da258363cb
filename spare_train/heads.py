"""PRM heads and their loss: plain tensors in, plain tensors out.

Every head maps the decoder's hidden states at the step-tag positions (``[B, S, H]``) to two
logits per step, ``[B, S, 2]`` ordered (incorrect, correct); the step score is the softmax
probability of *correct*.

* :class:`LMTokenHead` (``lm_tokens``, Math-Shepherd / SPARE-PRM): the LM head's logits of the two
  label tokens (``"-"``, ``"+"``) at the tag. Only those two rows of the output embedding are
  used, so ``[B, L, V]`` logits are never materialised (for a 151k vocabulary, 8 sequences of
  512 tokens that would be 2.5 GB of float32).
* :class:`ClassifierHead` (``classifier``): a fresh linear layer ``H -> 2`` (exported as
  ``*ForTokenClassification``'s ``score``) or the two-layer MLP of Qwen2.5-Math-PRM
  (``H -> H, ReLU, H -> 2``, exported as :class:`spare_train.modeling_prm.SparePRMForTokenClassification`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spare_train.backbone import decoder_body, unwrap

IGNORE = -100.0


def gather_steps(hidden: Tensor, positions: Tensor) -> Tensor:
    """``hidden[b, positions[b, s]]``: ``[B, L, H]`` x ``[B, S]`` -> ``[B, S, H]``."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return hidden[rows, positions]


def body_hidden(model: Any, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Last hidden states ``[B, L, H]`` of the decoder body (after its final norm), no LM head."""
    out = decoder_body(model)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return out[0]


class LMTokenHead(nn.Module):
    """Logits of two vocabulary tokens at each step tag, read off the backbone's own LM head.

    Has no parameters of its own: it trains the backbone to put mass on ``"+"`` after a correct
    step and on ``"-"`` after a wrong one. Mirrors the causal LM's output path: the two output
    embedding rows (and bias), then the model's logit scale / soft-capping when it has one.
    """

    def __init__(self, neg_id: int, pos_id: int) -> None:
        super().__init__()
        self.neg_id, self.pos_id = int(neg_id), int(pos_id)

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


class ClassifierHead(nn.Module):
    """A new 2-way classifier on the tag's hidden state.

    ``linear``: ``score = Linear(H, 2)``, the layout of transformers' ``*ForTokenClassification``.
    ``mlp``: ``score = Sequential(Linear(H, H), ReLU(), Linear(H, 2))``, Qwen2.5-Math-PRM's head.
    Initialised like transformers heads: normal(0, ``init_std``) weights, zero bias.
    """

    def __init__(self, hidden_size: int, kind: Literal["linear", "mlp"] = "linear", init_std: float = 0.02) -> None:
        super().__init__()
        if kind == "linear":
            self.score: nn.Module = nn.Linear(hidden_size, 2)
        elif kind == "mlp":
            self.score = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 2))
        else:
            raise ValueError(f"classifier kind must be 'linear' or 'mlp', not {kind!r}")
        self.kind = kind
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=init_std)
                nn.init.zeros_(m.bias)

    @classmethod
    def wrap(cls, score: nn.Module) -> ClassifierHead:
        """A head around an existing ``score`` module (e.g. an exported ``*ForTokenClassification``'s)."""
        head = cls.__new__(cls)
        nn.Module.__init__(head)
        head.score, head.kind = score, "linear" if isinstance(score, nn.Linear) else "mlp"
        return head

    def forward(self, hidden: Tensor, model: Any = None) -> Tensor:
        first = self.score if isinstance(self.score, nn.Linear) else self.score[0]
        return self.score(hidden.to(first.weight.dtype)).float()


def step_logits(model: Any, head: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """The whole scoring path: body -> hidden at ``batch["label_positions"]`` -> head. ``[B, S, 2]``."""
    hidden = body_hidden(model, batch["input_ids"], batch.get("attention_mask"))
    return head(gather_steps(hidden, batch["label_positions"]), model)


def step_scores(logits: Tensor) -> Tensor:
    """P(correct) per step: softmax over the (incorrect, correct) logits. ``[B, S, 2]`` -> ``[B, S]``."""
    return logits.float().softmax(-1)[..., 1]


def last_step_mask(step_mask: Tensor) -> Tensor:
    """True only at each row's last real step (rows hold real steps first). ``[B, S]`` bool."""
    mask = step_mask.bool()
    last = mask.long().sum(1) - 1
    out = torch.zeros_like(mask)
    has = last >= 0
    out[has.nonzero(as_tuple=True)[0], last[has]] = True
    return out


def up_to_first_error(labels: Tensor, threshold: float = 0.5) -> Tensor:
    """True at each row's steps up to and including its first incorrect one. ``[B, S]`` bool.

    Steps after a solution's first error are mostly consequences of it (a reference-guided
    judge labels them INCORRECT although each may be locally right); leaving them out of the loss
    is Qwen's first-error labelling. Ignored labels (``-100``/NaN) neither count nor end a row.
    """
    labels = labels.float()
    valid = (labels != IGNORE) & ~labels.isnan()
    wrong = valid & (labels < threshold)
    errors_before = torch.cumsum(wrong.long(), dim=1) - wrong.long()
    return valid & (errors_before == 0)


def soft_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    class_weights: tuple[float, float] | None = None,
    last_step_only: bool = False,
    step_mask: Tensor | None = None,
    first_error_only: bool = False,
) -> Tensor:
    """Two-class cross-entropy with soft targets, averaged over labeled steps.

    ``logits``: ``[B, S, 2]`` (incorrect, correct). ``labels``: ``[B, S]``, P(correct) in [0, 1];
    ``-100`` (or NaN) is ignored. Hard 0/1 labels give ordinary cross-entropy.
    ``class_weights`` ``(w_incorrect, w_correct)`` weight each target term; the mean is taken over
    the summed target weights, which for hard labels equals ``F.cross_entropy(weight=…)``.
    ``last_step_only``: only each row's last real step (per ``step_mask``, else per labels)
    counts -- the outcome-style objective. ``first_error_only``: only steps up to and including
    each row's first incorrect one count (:func:`up_to_first_error`). Returns 0 (with a graph)
    when nothing is labeled.
    """
    labels = labels.float()
    valid = (labels != IGNORE) & ~labels.isnan()
    if first_error_only:
        valid = valid & up_to_first_error(labels)
    if last_step_only:
        valid = valid & last_step_mask(step_mask if step_mask is not None else valid)
    y = torch.where(valid, labels, torch.zeros_like(labels)).clamp(0.0, 1.0)
    target = torch.stack([1.0 - y, y], dim=-1)
    if class_weights is not None:
        target = target * torch.tensor(class_weights, dtype=target.dtype, device=target.device)
    logp = logits.float().log_softmax(-1)
    per_step = -(target * logp).sum(-1)
    weight = target.sum(-1) * valid
    return (per_step * valid).sum() / weight.sum().clamp_min(1e-12)


def build_head(
    kind: Literal["lm_tokens", "classifier"],
    *,
    hidden_size: int | None = None,
    label_ids: tuple[int, int] | None = None,
    classifier_type: Literal["linear", "mlp"] = "linear",
    init_std: float = 0.02,
) -> nn.Module:
    """Construct a head by name (``lm_tokens`` needs ``label_ids``, ``classifier`` ``hidden_size``)."""
    if kind == "lm_tokens":
        if label_ids is None:
            raise ValueError("lm_tokens head needs label_ids (incorrect, correct)")
        return LMTokenHead(*label_ids)
    if kind == "classifier":
        if hidden_size is None:
            raise ValueError("classifier head needs hidden_size")
        return ClassifierHead(hidden_size, classifier_type, init_std)
    raise ValueError(f"head must be 'lm_tokens' or 'classifier', not {kind!r}")


def label_token_ids(tokenizer: Any, label_tokens: tuple[str, str]) -> tuple[int, int]:
    """Ids of the (incorrect, correct) label strings; each must be exactly one existing token."""
    ids = []
    for tok in label_tokens:
        enc = tokenizer.encode(tok, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(f"label token {tok!r} is {len(enc)} tokens {enc}; pick single-token labels")
        ids.append(enc[0])
    if ids[0] == ids[1]:
        raise ValueError(f"label tokens {label_tokens} map to the same id {ids[0]}")
    return ids[0], ids[1]
