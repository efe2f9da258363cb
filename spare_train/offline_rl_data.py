"""Examples, batches and the DataModule for offline-RL policy training.

A **completion** is one tokenised answer: ``response_ids`` (everything after the prompt, suffix
and EOS included), ``step_ids`` (the step each response token belongs to, -1 for separators, the
preamble, the suffix and EOS) and ``step_labels``. An **example** is a prompt with one completion
(SFT, RFT, KTO) or two (``[chosen, rejected]``). :class:`PolicyCollator` turns examples into
rows, chosen rows first, so chosen and rejected go through one concatenated forward pass.

Batch (``R`` = rows = ``B * completions``, ``L`` tokens, ``S`` steps):

| key | shape | meaning |
|---|---|---|
| ``input_ids`` / ``attention_mask`` | ``[R, L]`` long | right-padded |
| ``loss_mask`` | ``[R, L]`` bool | response tokens (prompt and padding never carry loss) |
| ``step_ids`` | ``[R, L]`` long | step index per token, -1 elsewhere |
| ``step_labels`` | ``[R, S]`` float | NaN for padding and unlabeled steps |
| ``first_error`` / ``shared_steps`` | ``[B]`` long | rejected answer's first error (-1: none); Step-DPO prefix |
| ``desirable`` | ``[R]`` bool | KTO label |
| ``ref_logps`` | ``[R, L]`` float | precomputed reference token log-probs, when cached |
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from spare_train.pairs import build_pairs, kto_view, rft_view, step_dpo_pairs
from spare_train.records import StepRecord
from spare_train.tokenize import chat_parts, load_tokenizer

View = Literal["pairs", "step_pairs", "unpaired", "filtered", "all"]


# ---------------------------------------------------------------------------- tokenisation
def _bos(tokenizer: Any, template: str) -> list[int]:
    # chat templates write their own BOS text; plain prompts get the BOS the tokenizer would add
    if template == "chat" or tokenizer.bos_token_id is None:
        return []
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return [tokenizer.bos_token_id] if ids and ids[0] == tokenizer.bos_token_id else []


def response_text(record: StepRecord, separator: str = "\n") -> tuple[str, list[tuple[int, int]]]:
    """The answer as text (preamble, then steps joined by ``separator``) and each step's
    ``(start, end)`` character span in it."""
    text = record.preamble + (separator if record.preamble and record.steps and not record.preamble.endswith(separator) else "")
    spans = []
    for i, step in enumerate(record.steps):
        if i:
            text += separator
        spans.append((len(text), len(text) + len(step)))
        text += step
    return text, spans


def tokenize_completions(
    records: Sequence[StepRecord], tokenizer: Any, template: str = "chat", separator: str = "\n"
) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Prompt ids and completion per record, untruncated; two batched fast-tokenizer calls.

    The prompt is the chat template's text before the assistant content (:func:`chat_parts`);
    the response is the answer text plus the template's suffix up to and including EOS (EOS is
    appended when the suffix lacks it), so a trained policy stops where the answer ends. Each response token gets the step of its first character that lies in a step
    (offsets from the fast tokenizer), -1 when none does.
    """
    parts = [chat_parts(r.prompt, tokenizer, template) for r in records]
    prefixes = list(dict.fromkeys(p for p, _ in parts))
    bos = _bos(tokenizer, template)
    prefix_ids = dict(zip(prefixes, tokenizer(prefixes, add_special_tokens=False)["input_ids"], strict=True))
    bodies = [response_text(r, separator) for r in records]
    eos_text = tokenizer.eos_token or ""
    # end with EOS: cut the suffix right after it (a chat template's end-of-turn), else append it
    suffixes = [s[: s.index(eos_text) + len(eos_text)] if eos_text and eos_text in s else s for _, s in parts]
    texts = [body + suffix for (body, _), suffix in zip(bodies, suffixes, strict=True)]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    eos = tokenizer.eos_token_id
    prompts, completions = [], []
    for rec, (prefix, _), (_, spans), ids, offsets, text in zip(
        records, parts, bodies, enc["input_ids"], enc["offset_mapping"], texts, strict=True
    ):
        char_step = [-1] * len(text)
        for i, (a, b) in enumerate(spans):
            char_step[a:b] = [i] * (b - a)
        steps = [next((char_step[c] for c in range(a, b) if char_step[c] >= 0), -1) for a, b in offsets]
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
            steps.append(-1)
        labels = [math.nan if x is None else float(x) for x in rec.labels]
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


def _first_error(labels: Sequence[float], threshold: float = 0.5) -> int:
    return next((i for i, x in enumerate(labels) if not math.isnan(x) and x < threshold), -1)


def make_examples(
    groups: Sequence[Sequence[StepRecord]],
    tokenizer: Any,
    *,
    template: str = "chat",
    max_length: int = 1024,
    max_prompt_length: int | None = 512,
    shared_steps: Sequence[int] | None = None,
    desirable: Sequence[bool] | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One example per group of records of the same prompt (1 record, or ``[chosen, rejected]``).

    Returns the examples and how many were dropped because the prompt left no room.
    """
    flat = [r for g in groups for r in g]
    prompts, comps = tokenize_completions(flat, tokenizer, template)
    examples, dropped, k = [], 0, 0
    for i, g in enumerate(groups):
        fit = truncate(prompts[k], comps[k : k + len(g)], max_length, max_prompt_length)
        k += len(g)
        if fit is None:
            dropped += 1
            continue
        ex = {
            "ids": [r.id for r in g],
            "group_id": g[0].group_id,
            "prompt_ids": fit[0],
            "completions": fit[1],
            "first_error": _first_error(fit[1][-1]["step_labels"]) if len(g) == 2 else -1,
            "shared_steps": shared_steps[i] if shared_steps is not None else 0,
            "desirable": bool(desirable[i]) if desirable is not None else True,
            "answer": g[0].answer or "",
        }
        examples.append(ex)
    return examples, dropped


# ---------------------------------------------------------------------------- collation
@dataclass
class PolicyCollator:
    """Pad examples into rows (all first completions, then all second ones), right-padded."""

    pad_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(examples[0]["completions"])
        rows = [(ex["prompt_ids"], ex["completions"][j]) for j in range(n) for ex in examples]
        L_ = max(len(p) + len(c["response_ids"]) for p, c in rows)
        S = max(len(c["step_labels"]) for _, c in rows)
        R = len(rows)
        batch = {
            "input_ids": torch.full((R, L_), self.pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(R, L_, dtype=torch.long),
            "loss_mask": torch.zeros(R, L_, dtype=torch.bool),
            "step_ids": torch.full((R, L_), -1, dtype=torch.long),
            "step_labels": torch.full((R, S), math.nan, dtype=torch.float32),
        }
        has_ref = all("ref_logps" in c for _, c in rows)
        if has_ref:
            batch["ref_logps"] = torch.zeros(R, L_, dtype=torch.float32)
        for r, (p, c) in enumerate(rows):
            a, b = len(p), len(p) + len(c["response_ids"])
            batch["input_ids"][r, :b] = torch.tensor(p + c["response_ids"])
            batch["attention_mask"][r, :b] = 1
            batch["loss_mask"][r, a:b] = True
            batch["step_ids"][r, a:b] = torch.tensor(c["step_ids"])
            batch["step_labels"][r, : len(c["step_labels"])] = torch.tensor(c["step_labels"])
            if has_ref:
                batch["ref_logps"][r, a:b] = torch.tensor(c["ref_logps"])
        batch["first_error"] = torch.tensor([ex["first_error"] for ex in examples])
        batch["shared_steps"] = torch.tensor([ex["shared_steps"] for ex in examples])
        batch["desirable"] = torch.tensor([ex["desirable"] for ex in examples] * n)
        batch["num_completions"] = n
        batch["ids"] = [ex["ids"][j] for j in range(n) for ex in examples]  # row order
        return batch


# ---------------------------------------------------------------------------- views
@dataclass
class PairingConfig:
    """How preference pairs are built (see :func:`spare_train.pairs.build_pairs`).

    Args:
        keys: score keys, e.g. ``["outcome", "mean_label"]`` (SPARE) or ``["outcome"]``.
        comparator: ``strict_pareto`` (SPARE-ORPO), ``pareto`` or ``greater_than``.
        index: the coordinate ``greater_than`` compares.
        max_pairs_per_question: cap per question (the paper: 10); None keeps all.
        reference_as_chosen: also pair the reference solution (read with ``add_reference``)
            against each candidate it beats.
        seed: seeds the draw when a question has more pairs than the cap.
    """

    keys: list[str] | None = None
    comparator: Literal["strict_pareto", "pareto", "greater_than"] = "strict_pareto"
    index: int = 0
    max_pairs_per_question: int | None = 10
    reference_as_chosen: bool = False
    seed: int = 0


@dataclass
class FilterConfig:
    """Which candidates the ``filtered`` (RFT) and ``unpaired``/``all`` views keep.

    Args:
        threshold: None keeps candidates with all steps correct; else the ``aggregate`` of the
            step labels must reach it.
        aggregate: ``mean``, ``min`` or ``prod``.
        require_outcome: also require a correct final answer.
        include_reference: add the reference solutions (SFT on references).
    """

    threshold: float | None = None
    aggregate: Literal["mean", "min", "prod"] = "mean"
    require_outcome: bool = True
    include_reference: bool = False


def build_view(
    records: Sequence[StepRecord], view: View, pairing: PairingConfig, filtering: FilterConfig
) -> tuple[list[list[StepRecord]], dict[str, Any]]:
    """Record groups (``[record]`` or ``[chosen, rejected]``) for ``view`` and extras for
    :func:`make_examples` (``shared_steps``, ``desirable``) plus a ``summary`` line."""
    if view in ("pairs", "step_pairs"):
        pairs, report = build_pairs(
            records,
            keys=tuple(pairing.keys or ("outcome", "mean_label")),
            comparator=pairing.comparator,
            index=pairing.index,
            max_pairs_per_question=pairing.max_pairs_per_question,
            reference_as_chosen=pairing.reference_as_chosen,
            seed=pairing.seed,
        )
        summary = report.summary()
        if view == "step_pairs":
            pairs, dropped = step_dpo_pairs(pairs)
            summary += f"; Step-DPO keeps {len(pairs)} ({dropped} diverge before the first error)"
        return [[p.chosen, p.rejected] for p in pairs], {
            "shared_steps": [p.shared_steps for p in pairs],
            "summary": summary,
        }
    if view == "unpaired":
        items = kto_view(records, include_reference=filtering.include_reference)
        good = sum(d for _, d in items)
        return [[r] for r, _ in items], {
            "desirable": [d for _, d in items],
            "summary": f"{good} desirable, {len(items) - good} undesirable",
        }
    if view == "filtered":
        kept = rft_view(
            records,
            threshold=filtering.threshold,
            aggregate=filtering.aggregate,
            require_outcome=filtering.require_outcome,
            include_reference=filtering.include_reference,
        )
        return [[r] for r in kept], {"summary": f"{len(kept)} of {len(records)} candidates kept"}
    if view == "all":
        kept = [r for r in records if filtering.include_reference or not r.is_reference]
        return [[r] for r in kept], {"summary": f"{len(kept)} candidates"}
    raise ValueError(f"unknown view {view!r}")


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict[str, Any]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


# ---------------------------------------------------------------------------- DataModule
class OfflineRLDataModule(L.LightningDataModule):
    """Reads annotation files, builds the view the objective needs, tokenises, batches.

    Args:
        train_files: annotation file(s), folder or glob.
        val_files: held-out files (same view); None for no validation.
        format: reader name for :func:`spare_train.formats.read_records`.
        read_options: reader options (e.g. ``{"add_reference": true}`` for reference-as-chosen).
        tokenizer: tokenizer path / hub id, or ``tiny-llama``.
        template: ``chat`` (tokenizer's chat template) or ``plain``.
        view: ``pairs`` (DPO, IPO, ORPO, step-weighted DPO), ``step_pairs`` (Step-DPO),
            ``unpaired`` (KTO), ``filtered`` (RFT / SFT), ``all`` (step-weighted SFT).
        pairing: how pairs are built.
        filtering: what ``filtered`` / ``unpaired`` / ``all`` keep.
        max_length: tokens per prompt + response.
        max_prompt_length: prompt tokens kept when an example is too long.
        batch_size: examples (prompts) per batch; a pair batch has twice as many rows.
        eval_batch_size: for validation and the reference pre-pass (default ``batch_size``).
        num_workers: DataLoader workers.
        seed: shuffling seed.
    """

    def __init__(
        self,
        train_files: str | list[str],
        val_files: str | list[str] | None = None,
        format: str = "spare",
        read_options: dict[str, Any] | None = None,
        tokenizer: str = "tiny-llama",
        template: Literal["chat", "plain"] = "chat",
        view: View = "pairs",
        pairing: PairingConfig | None = None,
        filtering: FilterConfig | None = None,
        max_length: int = 1024,
        max_prompt_length: int | None = 512,
        batch_size: int = 4,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.pairing = pairing or PairingConfig()
        self.filtering = filtering or FilterConfig()
        self._tokenizer: Any = None
        self.datasets: dict[str, ListDataset] = {}
        self.summaries: dict[str, str] = {}
        self.reference_cached = False

    @property
    def tokenizer(self) -> Any:
        """Loaded on first use (building the module, e.g. to check a recipe, stays cheap)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.hparams.tokenizer)
            if self._tokenizer.pad_token_id is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
        return self._tokenizer

    def load_split(self, files: str | list[str]) -> tuple[ListDataset, str]:
        """Read ``files`` and build this module's view as a dataset (plus a summary line)."""
        from spare_train.formats import read_records

        hp = self.hparams
        records, report = read_records(hp.format, files, **(hp.read_options or {}))
        groups, extra = build_view(records, hp.view, self.pairing, self.filtering)
        examples, dropped = make_examples(
            groups,
            self.tokenizer,
            template=hp.template,
            max_length=hp.max_length,
            max_prompt_length=hp.max_prompt_length,
            shared_steps=extra.get("shared_steps"),
            desirable=extra.get("desirable"),
        )
        summary = f"{report.kept} records read; {extra['summary']}; {len(examples)} examples ({dropped} too long)"
        return ListDataset(examples), summary

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        for split, files in (("train", hp.train_files), ("val", hp.val_files)):
            if files and split not in self.datasets:
                self.datasets[split], self.summaries[split] = self.load_split(files)
                if not len(self.datasets[split]):
                    raise ValueError(f"{split}: no examples ({self.summaries[split]})")

    def collator(self) -> PolicyCollator:
        return PolicyCollator(self.tokenizer.pad_token_id)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(
            self.datasets["train"], batch_size=self.hparams.batch_size, shuffle=True, generator=g,
            collate_fn=self.collator(), num_workers=self.hparams.num_workers,
        )

    def val_dataloader(self) -> DataLoader | list:
        if "val" not in self.datasets:
            return []
        return self._ordered_loader(self.datasets["val"])

    def _ordered_loader(self, ds: ListDataset) -> DataLoader:
        bs = self.hparams.eval_batch_size or self.hparams.batch_size
        return DataLoader(ds, batch_size=bs, shuffle=False, collate_fn=self.collator(), num_workers=self.hparams.num_workers)

    @torch.no_grad()
    def precompute_reference(self, ref_token_logps: Callable[[dict[str, Any]], torch.Tensor]) -> None:
        """Run the reference model once over every split and store its token log-probs in each
        completion (``ref_logps``, aligned with ``response_ids``); batches then carry ``ref_logps``.

        ``ref_token_logps(batch) -> [R, L]`` (see :func:`spare_train.losses.token_logprobs`).
        Idempotent: a second call does nothing.
        """
        if self.reference_cached:
            return
        for ds in self.datasets.values():
            loader = self._ordered_loader(ds)
            k = 0
            for batch in loader:
                logps = ref_token_logps(batch).float().cpu()
                mask = batch["loss_mask"]
                B = len(logps) // batch["num_completions"]
                for r in range(len(logps)):
                    ex = ds.items[k + r % B]
                    ex["completions"][r // B]["ref_logps"] = logps[r][mask[r]].tolist()
                k += B
        self.reference_cached = True


def split_groups(records: Sequence[StepRecord], fraction: float, seed: int = 0) -> tuple[list[StepRecord], list[StepRecord]]:
    """Split records by question (never a question on both sides): ``(rest, held_out)``."""
    gids = sorted({r.group_id for r in records})
    random.Random(seed).shuffle(gids)
    held = set(gids[: round(len(gids) * fraction)])
    return [r for r in records if r.group_id not in held], [r for r in records if r.group_id in held]
