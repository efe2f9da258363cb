"""Policy examples and batches for offline RL (and any objective that learns a response).

A **turn** is a prompt and the response to learn, with each step's character span and label
(:class:`Turn`); :func:`record_turn` makes one from a record (the response is its preamble and
steps). A **completion** is one tokenised response: ``response_ids`` (everything after the
prompt, the template's end-of-turn and EOS included), ``step_ids`` (the step each response token
belongs to, -1 for separators, preamble and EOS) and ``step_labels``. An **example** is a prompt
with one completion (SFT, RFT, KTO) or two (``[chosen, rejected]``). :class:`PolicyCollator`
turns examples into rows, chosen rows first, so chosen and rejected share one forward pass.

Batch (``R`` = rows = ``B * completions``, ``L`` tokens, ``S`` steps):

| key | shape | meaning |
|---|---|---|
| ``input_ids`` / ``attention_mask`` | ``[R, L]`` long | right-padded |
| ``loss_mask`` | ``[R, L]`` bool | response tokens (prompt and padding never carry loss) |
| ``step_ids`` | ``[R, L]`` long | step index per token, -1 elsewhere |
| ``step_labels`` | ``[R, S]`` float | ``IGNORE`` (-100) for padding and unlabeled steps |
| ``first_error`` / ``shared_steps`` | ``[B]`` long | rejected answer's first error (-1: none); Step-DPO prefix |
| ``desirable`` | ``[R]`` bool | KTO label |
| ``kl_input_ids`` / ``kl_attention_mask`` / ``kl_loss_mask`` | ``[B, L']`` | KTO only: each prompt with the completion of an example of *another question* (:func:`mismatched_partners`), for the KL estimate |
| ``index`` | ``[B]`` long | the examples' rows in their dataset (the reference-log-prob cache keys on it) |
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from spare_train.data.base import AnnotationDataModule, cached_dataset, records_fingerprint, tokenizer_fingerprint
from spare_train.data.views import FilterConfig, PairingConfig, View, build_view
from spare_train.records import IGNORE, Prompt, StepRecord, first_error
from spare_train.tokenize import bos_ids, chat_parts_many


# ---------------------------------------------------------------------------- text
@dataclass
class Turn:
    """A prompt and the response to learn.

    ``spans[i]`` is step ``i``'s ``(start, end)`` in ``response`` and ``labels[i]`` its label
    (``None``: unlabeled)."""

    prompt: Prompt
    response: str
    spans: list[tuple[int, int]] = field(default_factory=list)
    labels: list[float | None] = field(default_factory=list)


def response_text(record: StepRecord, separator: str = "\n") -> tuple[str, list[tuple[int, int]]]:
    """The answer as text (preamble, then steps joined by ``separator``) and each step's
    ``(start, end)`` character span in it."""
    pre = record.preamble
    text = pre + (separator if pre and record.steps and not pre.endswith(separator) else "")
    spans = []
    for i, step in enumerate(record.steps):
        if i:
            text += separator
        spans.append((len(text), len(text) + len(step)))
        text += step
    return text, spans


def record_turn(record: StepRecord, separator: str = "\n") -> Turn:
    """The record's prompt and its solution as the response."""
    text, spans = response_text(record, separator)
    return Turn(record.prompt, text, spans, list(record.labels))


# ---------------------------------------------------------------------------- tokenisation
def tokenize_turns(turns: Sequence[Turn], tokenizer: Any, template: str = "chat") -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Prompt ids and completion per turn, untruncated; two batched fast-tokenizer calls.

    The prompt is the chat template's text before the assistant content (:func:`chat_parts_many`,
    the same function PRM examples use); the response is the turn's text plus the template's
    suffix up to and including EOS (EOS is appended when the suffix lacks it), so a trained policy
    stops where the answer ends. Each response token gets the step of its first character that
    lies in a step (offsets from the fast tokenizer), -1 when none does.
    """
    parts = chat_parts_many([t.prompt for t in turns], tokenizer, template)
    prefixes = list(dict.fromkeys(p for p, _ in parts))
    bos = bos_ids(tokenizer, template)
    prefix_ids = dict(zip(prefixes, tokenizer(prefixes, add_special_tokens=False)["input_ids"], strict=True))
    eos_text = tokenizer.eos_token or ""
    # end with EOS: cut the suffix right after it (a chat template's end-of-turn), else append it
    suffixes = [s[: s.index(eos_text) + len(eos_text)] if eos_text and eos_text in s else s for _, s in parts]
    texts = [t.response + suffix for t, suffix in zip(turns, suffixes, strict=True)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    eos = tokenizer.eos_token_id
    prompts, completions = [], []
    for turn, (prefix, _), ids, offsets, text in zip(turns, parts, enc["input_ids"], enc["offset_mapping"], texts, strict=True):
        char_step = [-1] * len(text)
        for i, (a, b) in enumerate(turn.spans):
            char_step[a:b] = [i] * (b - a)
        steps = [next((char_step[c] for c in range(a, b) if char_step[c] >= 0), -1) for a, b in offsets]
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            steps.append(-1)
        labels = [IGNORE if x is None else float(x) for x in turn.labels]
        prompts.append(bos + prefix_ids[prefix])
        completions.append({"response_ids": ids, "step_ids": steps, "step_labels": labels})
    return prompts, completions


def truncate(
    prompt_ids: list[int], completions: list[dict[str, Any]], max_length: int, max_prompt_length: int | None
) -> tuple[list[int], list[dict[str, Any]]] | None:
    """Fit prompt + each response into ``max_length`` tokens; None when nothing of a response fits.

    When the longest response does not fit, the prompt is first cut from the left to
    ``max_prompt_length`` (keeping the end, next to the answer), then responses are cut from the
    right. The prompt is cut once for all completions of an example, so a pair shares it.
    """
    longest = max(len(c["response_ids"]) for c in completions)
    if len(prompt_ids) + longest > max_length and max_prompt_length and len(prompt_ids) > max_prompt_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
    room = max_length - len(prompt_ids)
    if room <= 0:
        return None
    out = [dict(c, response_ids=c["response_ids"][:room], step_ids=c["step_ids"][:room]) for c in completions]
    return prompt_ids, out


def make_examples(
    groups: Sequence[Sequence[Turn]],
    tokenizer: Any,
    *,
    ids: Sequence[Sequence[str]],
    group_ids: Sequence[str],
    template: str = "chat",
    max_length: int = 1024,
    max_prompt_length: int | None = 512,
    shared_steps: Sequence[int] | None = None,
    desirable: Sequence[bool] | None = None,
    answers: Sequence[str] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One example per group of turns of the same prompt (1 turn, or ``[chosen, rejected]``).

    Returns the examples (columns of :func:`features`) and how many were dropped because the
    prompt left no room.
    """
    flat = [t for g in groups for t in g]
    prompts, comps = tokenize_turns(flat, tokenizer, template)
    examples, dropped, k = [], 0, 0
    for i, g in enumerate(groups):
        fit = truncate(prompts[k], comps[k : k + len(g)], max_length, max_prompt_length)
        k += len(g)
        if fit is None:
            dropped += 1
            continue
        cs = fit[1]
        examples.append(
            {
                "ids": list(ids[i]),
                "group_id": group_ids[i],
                "prompt_ids": fit[0],
                "response_ids": [c["response_ids"] for c in cs],
                "step_ids": [c["step_ids"] for c in cs],
                "step_labels": [c["step_labels"] for c in cs],
                "first_error": first_error(cs[-1]["step_labels"]) if len(g) == 2 else -1,
                "shared_steps": shared_steps[i] if shared_steps is not None else 0,
                "desirable": bool(desirable[i]) if desirable is not None else True,
                "answer": answers[i] if answers is not None else "",
                "kl_response_ids": [],
            }
        )
    return examples, dropped


def features() -> Any:
    """Explicit ``datasets.Features`` of policy examples (one inner list per completion)."""
    from datasets import Features, List, Value

    return Features(
        {
            "ids": List(Value("string")),
            "group_id": Value("string"),
            "prompt_ids": List(Value("int64")),
            "response_ids": List(List(Value("int64"))),
            "step_ids": List(List(Value("int64"))),
            "step_labels": List(List(Value("float32"))),
            "first_error": Value("int64"),
            "shared_steps": Value("int64"),
            "desirable": Value("bool"),
            "answer": Value("string"),
            "kl_response_ids": List(Value("int64")),
        }
    )


def turns_digest(groups: Sequence[Sequence[Turn]]) -> str:
    """A hash of every turn's text, spans and labels: the part of a cached dataset's identity that
    the records alone do not fix (a subclass's :meth:`PolicyDataModule.turn` may add text)."""
    import hashlib
    import json

    h = hashlib.sha256()
    for g in groups:
        for t in g:
            h.update(json.dumps([t.prompt.__dict__, t.response, t.spans, t.labels]).encode())
    return h.hexdigest()[:24]


def mismatched_partners(group_ids: Sequence[str], seed: int = 0) -> list[int]:
    """For each example, the index of an example of a *different* question (-1 when there is none).

    KTO estimates its reference point on mismatched (prompt, completion) pairs. The paper pairs
    within the microbatch, but length-grouped batches often hold the candidates of one question,
    whose "mismatched" pairs would then share the prompt; pairing once over the whole dataset (a
    seeded permutation, each example with the next one of another question) keeps every pair
    mismatched whatever the batching.
    """
    import random

    order = list(range(len(group_ids)))
    random.Random(seed).shuffle(order)
    out = [-1] * len(order)
    n = len(order)
    for k, i in enumerate(order):
        for step in range(1, n):
            j = order[(k + step) % n]
            if group_ids[j] != group_ids[i]:
                out[i] = j
                break
    return out


# ---------------------------------------------------------------------------- collation
def _pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """``(prompt_ids, response_ids)`` rows right-padded: ``input_ids``, ``attention_mask``, ``loss_mask``."""
    length = max(len(p) + len(r) for p, r in rows)
    out = {
        "input_ids": torch.full((len(rows), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
        "loss_mask": torch.zeros(len(rows), length, dtype=torch.bool),
    }
    for i, (p, r) in enumerate(rows):
        a, b = len(p), len(p) + len(r)
        out["input_ids"][i, :b] = torch.tensor(p + r, dtype=torch.long)
        out["attention_mask"][i, :b] = 1
        out["loss_mask"][i, a:b] = True
    return out


@dataclass
class PolicyCollator:
    """Pad examples into rows (all first completions, then all second ones), right-padded.

    ``kl_rows``: also build KTO's mismatched rows, each prompt with its ``kl_response_ids`` (the
    completion of an example of another question, :func:`mismatched_partners`), from which the KL
    reference point is estimated.
    """

    pad_id: int
    kl_rows: bool = False

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(examples[0]["response_ids"])
        order = [(ex, j) for j in range(n) for ex in examples]
        batch: dict[str, Any] = _pad_rows([(ex["prompt_ids"], ex["response_ids"][j]) for ex, j in order], self.pad_id)
        R, L_ = batch["input_ids"].shape
        S = max(1, max(len(ex["step_labels"][j]) for ex, j in order))
        batch["step_ids"] = torch.full((R, L_), -1, dtype=torch.long)
        batch["step_labels"] = torch.full((R, S), IGNORE, dtype=torch.float32)
        for r, (ex, j) in enumerate(order):
            a = len(ex["prompt_ids"])
            steps, labels = ex["step_ids"][j], ex["step_labels"][j]
            batch["step_ids"][r, a : a + len(steps)] = torch.tensor(steps, dtype=torch.long)
            batch["step_labels"][r, : len(labels)] = torch.tensor(labels, dtype=torch.float32)
        batch["first_error"] = torch.tensor([ex["first_error"] for ex in examples], dtype=torch.long)
        batch["shared_steps"] = torch.tensor([ex["shared_steps"] for ex in examples], dtype=torch.long)
        batch["desirable"] = torch.tensor([ex["desirable"] for ex in examples] * n)
        batch["index"] = torch.tensor([ex.get("index", -1) for ex in examples], dtype=torch.long)
        batch["num_completions"] = n
        batch["ids"] = [ex["ids"][j] for ex, j in order]  # row order
        if self.kl_rows:
            kl = _pad_rows([(ex["prompt_ids"], ex["kl_response_ids"]) for ex in examples], self.pad_id)
            batch.update({f"kl_{k}": v for k, v in kl.items()})
        return batch


# ---------------------------------------------------------------------------- DataModule
class PolicyDataModule(AnnotationDataModule):
    """Policy training batches: annotation files read, the objective's view built, tokenised.

    Takes every argument of :class:`~spare_train.data.base.AnnotationDataModule` (``train``,
    ``format``, ``tokenizer``, ``max_length`` = prompt + response tokens, ``batch_size`` = prompts
    per batch …), plus the view and how it is built.

    Args:
        view: ``pairs`` (DPO, IPO, ORPO, step-weighted DPO), ``step_pairs`` (Step-DPO),
            ``unpaired`` (KTO), ``filtered`` (RFT / SFT), ``all`` (step-weighted SFT); each
            objective says which it takes.
        pairing: how pairs are built.
        filtering: what ``filtered`` / ``unpaired`` / ``all`` keep.
        max_prompt_length: prompt tokens kept when an example is too long.
        **kwargs: the arguments of :class:`~spare_train.data.base.AnnotationDataModule`.
    """

    def __init__(
        self,
        view: View = "pairs",
        pairing: PairingConfig | None = None,
        filtering: FilterConfig | None = None,
        max_prompt_length: int | None = 512,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.pairing = PairingConfig(**pairing) if isinstance(pairing, dict) else pairing or PairingConfig()
        self.filtering = FilterConfig(**filtering) if isinstance(filtering, dict) else filtering or FilterConfig()
        # plain dicts in checkpoints, so that ``torch.load(weights_only=True)`` reads them back
        self.hparams["pairing"], self.hparams["filtering"] = asdict(self.pairing), asdict(self.filtering)
        self.view_summaries: dict[str, str] = {}

    def turn(self, record: StepRecord) -> Turn:
        """What the policy learns from one record (subclasses, e.g. critique data, override it)."""
        return record_turn(record)

    def groups(self, records: list[StepRecord]) -> tuple[list[list[StepRecord]], dict[str, Any]]:
        """The record groups examples are made of, and their extras: the configured view
        (subclasses, e.g. critique data, build their own)."""
        return build_view(records, self.hparams.view, self.pairing, self.filtering)

    def build_dataset(self, split: str, records: list[StepRecord]) -> Any:
        hp = self.hparams
        groups, extra = self.groups(records)
        turns = [[self.turn(r) for r in g] for g in groups]
        tok = self.tokenizer
        options = {"view": hp.view, "pairing": self.pairing.__dict__, "filtering": self.filtering.__dict__,
                   "template": hp.template, "max_length": hp.max_length, "max_prompt_length": hp.max_prompt_length}

        def name() -> str:  # called only when caching
            keyed = {**options, "turns": turns_digest(turns)}
            return f"policy-{records_fingerprint(records, keyed, tokenizer_fingerprint(tok))}"

        def build(report: Any) -> list[dict[str, Any]]:
            examples, dropped = make_examples(
                turns, tok,
                ids=[[r.id for r in g] for g in groups], group_ids=[g[0].group_id for g in groups],
                template=hp.template, max_length=hp.max_length, max_prompt_length=hp.max_prompt_length,
                shared_steps=extra.get("shared_steps"), desirable=extra.get("desirable"),
                answers=[g[0].answer or "" for g in groups],
            )  # fmt: skip
            if dropped:
                report.note("examples_too_long", dropped)
            if hp.view == "unpaired":  # KTO's mismatched completions, fixed once per dataset
                partners = mismatched_partners([e["group_id"] for e in examples], hp.seed)
                for e, j in zip(examples, partners, strict=True):
                    room = max(0, hp.max_length - len(e["prompt_ids"]))
                    e["kl_response_ids"] = examples[j]["response_ids"][0][:room] if j >= 0 else []
            return examples

        ds = cached_dataset(hp.cache_dir, name, build, features(), self.report)
        ds = ds.add_column("index", list(range(len(ds))))
        self.view_summaries[split] = f"{split}: {extra['summary']}"
        return ds

    def summary(self) -> str:
        return "\n".join([super().summary(), *self.view_summaries.values()])

    def collator(self) -> PolicyCollator:
        return PolicyCollator(self.tokenizer.pad_token_id, kl_rows=self.hparams.view == "unpaired")

    def example_lengths(self, ds: Any) -> list[int]:
        return [len(p) + max((len(r) for r in rs), default=0) for p, rs in zip(ds["prompt_ids"], ds["response_ids"], strict=True)]
