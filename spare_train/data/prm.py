"""PRM examples and batches: records tokenised with step-tag positions, padded or packed.

The shared data path (read, label policies, report, split, cache) is
:class:`spare_train.data.base.AnnotationDataModule`; this module adds what a PRM needs: the step
tag, tokenisation by :func:`spare_train.tokenize.tokenize_records` (the function scoring uses too)
and the :class:`StepCollator` (right-padding, or packing by :func:`pack_rows`).
"""

from __future__ import annotations

import heapq
from typing import Any

import torch

from spare_train.data.base import AnnotationDataModule, cached_dataset, records_fingerprint, tokenizer_fingerprint
from spare_train.records import IGNORE, StepRecord
from spare_train.tokenize import FormatConfig, features, tokenize_records


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Rows of example indices (each row in input order, rows by their first example) that hold
    every example in at most ``capacity`` tokens a row, with the fewest computed tokens
    (rows x longest row).

    Each row count from the least possible up to one example a row is tried; examples go
    longest first to the emptiest row (balanced rows waste less on padding than first-fit), and
    the cheapest feasible layout wins -- one example a row when the batch's lengths are already
    close (a length-grouped batch), so packing never computes more than padding would.
    """
    if any(n > capacity for n in lengths):
        raise ValueError(f"an example of {max(lengths)} tokens does not fit pack_length={capacity}")
    n = len(lengths)
    order = sorted(range(n), key=lambda i: -lengths[i])
    best: tuple[int, list[list[int]]] = (len(lengths) * max(lengths, default=0), [[i] for i in range(n)])
    for k in range(max(1, -(-sum(lengths) // capacity)), n):
        if k * max(lengths) >= best[0]:
            break  # every layout with k or more rows costs at least this much
        heap = [(0, r) for r in range(k)]
        rows: list[list[int]] = [[] for _ in range(k)]
        for i in order:
            used, r = heapq.heappop(heap)
            if used + lengths[i] > capacity:
                break
            rows[r].append(i)
            heapq.heappush(heap, (used + lengths[i], r))
        else:
            cost = k * max(used for used, _ in heap)
            if cost < best[0]:
                best = (cost, sorted(sorted(row) for row in rows))
    return best[1]


class StepCollator:
    """Right-pads tokenised examples into the batch of docs/architecture.md.

    With ``pack_length``, examples are packed into rows of at most that many tokens by
    :func:`pack_rows` (fewest computed tokens). The batch then also carries ``position_ids``
    (restarting per example), ``segment_ids`` (1, 2, … per example in a row, 0 padding) and
    ``label_rows`` (the row of each example); ``label_positions`` are offsets within that row.
    Models turn ``segment_ids`` into a block-diagonal causal mask with
    :func:`packed_attention_mask`, so packed examples never attend to each other.
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None, pack_length: int | None = None):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.pack_length = pack_length

    def _rows(self, examples: list[dict[str, Any]]) -> list[list[int]]:
        if not self.pack_length:
            return [[i] for i in range(len(examples))]
        for e in examples:
            if len(e["input_ids"]) > self.pack_length:
                raise ValueError(f"example {e['id']} has {len(e['input_ids'])} tokens > pack_length={self.pack_length}")
        return pack_rows([len(e["input_ids"]) for e in examples], self.pack_length)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        n = len(examples)
        rows = self._rows(examples)
        length = max(sum(len(examples[i]["input_ids"]) for i in row) for row in rows)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        steps = max(len(e["label_positions"]) for e in examples)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        segment_ids = torch.zeros((len(rows), length), dtype=torch.long)
        label_rows = torch.zeros(n, dtype=torch.long)
        positions = torch.zeros((n, steps), dtype=torch.long)
        labels = torch.full((n, steps), IGNORE, dtype=torch.float32)
        step_mask = torch.zeros((n, steps), dtype=torch.bool)
        for r, row in enumerate(rows):
            start = 0
            for seg, i in enumerate(row, start=1):
                e = examples[i]
                ids, pos = e["input_ids"], e["label_positions"]
                end = start + len(ids)
                input_ids[r, start:end] = torch.as_tensor(ids, dtype=torch.long)
                attention_mask[r, start:end] = 1
                position_ids[r, start:end] = torch.arange(len(ids))
                segment_ids[r, start:end] = seg
                label_rows[i] = r
                positions[i, : len(pos)] = torch.as_tensor(pos, dtype=torch.long) + start
                labels[i, : len(pos)] = torch.as_tensor(e["step_labels"], dtype=torch.float32)
                step_mask[i, : len(pos)] = True
                start = end
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "label_positions": positions,
            "step_labels": labels,
            "step_mask": step_mask,
            "outcome": torch.tensor([float(e["outcome"]) for e in examples], dtype=torch.float32),
            "ids": [e["id"] for e in examples],
            "group_ids": [e["group_id"] for e in examples],
            "answers": [e["answer"] for e in examples],
            "is_reference": torch.tensor([bool(e.get("is_reference", False)) for e in examples], dtype=torch.bool),
        }
        if self.pack_length:
            batch |= {"position_ids": position_ids, "segment_ids": segment_ids, "label_rows": label_rows}
        return batch


class PRMDataModule(AnnotationDataModule):
    """PRM training batches: step-annotated records tokenised with a tag after every step.

    Takes every argument of :class:`~spare_train.data.base.AnnotationDataModule` (``train``,
    ``format``, ``tokenizer``, ``max_length`` …), plus the step tag and packing.

    Args:
        step_tag: the step tag (one token; added to the tokenizer when it is split).
        pack: pack each batch's examples into rows of ``max_length`` tokens (block-diagonal
            attention, see :class:`StepCollator`); fewer, fuller rows for short examples.
        **kwargs: the arguments of :class:`~spare_train.data.base.AnnotationDataModule`.
    """

    def __init__(self, step_tag: str = " ки", pack: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.save_hyperparameters()

    @property
    def format_config(self) -> FormatConfig:
        hp = self.hparams
        return FormatConfig(template=hp.template, step_tag=hp.step_tag, max_length=hp.max_length)

    def build_dataset(self, split: str, records: list[StepRecord]) -> Any:
        tok, cfg = self.tokenizer, self.format_config

        def name() -> str:  # called only when caching
            return f"prm-{records_fingerprint(records, cfg.__dict__, tokenizer_fingerprint(tok), sorted(features()))}"

        return cached_dataset(
            self.hparams.cache_dir, name, lambda rep: tokenize_records(records, tok, cfg, rep, self.tag_id),
            features(), self.report,
        )  # fmt: skip

    def collator(self) -> StepCollator:
        hp = self.hparams
        return StepCollator(self.tokenizer.pad_token_id, pack_length=hp.max_length if hp.pack else None)

    def example_lengths(self, ds: Any) -> list[int]:
        return [len(x) for x in ds["input_ids"]]
