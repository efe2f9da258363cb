"""The LightningDataModule: files → records → label policies → group-wise split → tokenised batches.

All logic lives in the stages it calls (:mod:`spare_train.formats`, :mod:`spare_train.labels`,
:mod:`spare_train.tokenize`); this module wires them, caches the tokenised dataset with
``datasets``, and batches it with a length-grouped, DDP-sharding sampler.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from spare_train.formats import read_records
from spare_train.labels import PolicySpec, apply_policies
from spare_train.records import StepRecord
from spare_train.report import DataError, Report
from spare_train.tokenize import IGNORE, FormatConfig, features, load_tokenizer, prepare_tokenizer, tokenize_records


def split_by_group(records: Sequence[StepRecord], val_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded hold-out by ``group_id``: no question has candidates on both sides.

    The held-out groups depend only on the set of group ids and the seed, not on record order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), not {val_fraction}")
    groups = sorted({r.group_id for r in records})
    random.Random(seed).shuffle(groups)
    n_val = math.ceil(val_fraction * len(groups)) if val_fraction > 0 else 0
    if val_fraction > 0 and n_val >= len(groups):
        raise ValueError(f"only {len(groups)} question(s): too few to hold out val_fraction={val_fraction}")
    val_groups = set(groups[:n_val])
    train = [r for r in records if r.group_id not in val_groups]
    val = [r for r in records if r.group_id in val_groups]
    return train, val


class StepCollator:
    """Right-pads tokenised examples into the batch of docs/architecture.md.

    With ``pack_length``, examples are packed first-fit, in order, into rows of at most that many
    tokens (less padding for short examples). The batch then also carries ``position_ids``
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
        rows: list[list[int]] = []
        used: list[int] = []
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            if n > self.pack_length:
                raise ValueError(f"example {e['id']} has {n} tokens > pack_length={self.pack_length}")
            for r, u in enumerate(used):
                if u + n <= self.pack_length:
                    rows[r].append(i)
                    used[r] += n
                    break
            else:
                rows.append([i])
                used.append(n)
        return rows

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
        }
        if self.pack_length:
            batch |= {"position_ids": position_ids, "segment_ids": segment_ids, "label_rows": label_rows}
        return batch


def packed_attention_mask(segment_ids: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
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


class LengthGroupedSampler(DistributedSampler):
    """Yields indices so that consecutive ``batch_size`` chunks have similar lengths, sharded by rank.

    Indices are shuffled (seed + epoch), cut into mega-batches, sorted by length inside each, and cut
    into batches; ``num_replicas`` neighbouring batches form one step, whose batches go one to each
    rank (so ranks wait little for each other), and steps are shuffled. It subclasses
    ``DistributedSampler`` so Lightning leaves it in place under DDP; ``set_epoch`` reshuffles.
    Every rank yields the same number of batches (the last step is filled by repeating indices).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        mega_batch_mult: int = 50,
    ):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.mega = batch_size * num_replicas * mega_batch_mult
        step = batch_size * num_replicas
        self.num_steps = max(1, -(-len(self.lengths) // step))
        self.num_samples = self.num_steps * batch_size
        self.total_size = self.num_samples * num_replicas

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        n = len(self.lengths)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        pad = self.total_size - n  # repeat indices so every rank gets the same number of batches
        order += (order * (pad // max(n, 1) + 1))[:pad]
        steps: list[list[list[int]]] = []
        for m in range(0, len(order), self.mega):
            chunk = sorted(order[m : m + self.mega], key=lambda i: -self.lengths[i])
            batches = [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
            steps += [batches[s : s + self.num_replicas] for s in range(0, len(batches), self.num_replicas)]
        if self.shuffle:
            perm = torch.randperm(len(steps), generator=g).tolist()
            steps = [steps[i] for i in perm]
        return [step[self.rank] for step in steps]

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return self.num_samples


def _fingerprint(records: Sequence[StepRecord], tokenizer: Any, cfg: FormatConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(cfg.__dict__, sort_keys=True).encode())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    for r in records:
        h.update(json.dumps([r.id, r.prompt.__dict__, r.steps, r.labels, r.outcome, r.answer]).encode())
    return h.hexdigest()[:24]


def tokenize_dataset(
    records: Sequence[StepRecord],
    tokenizer: Any,
    cfg: FormatConfig,
    report: Report,
    tag_id: int,
    cache_dir: str | None = None,
    batch_size: int = 1000,
) -> Any:
    """Tokenise records into a ``datasets.Dataset`` with explicit features, through ``Dataset.map``.

    With ``cache_dir`` the result is cached under a fingerprint of the records, tokenizer and
    format; a cache hit still reports every rejection and truncation (they are columns).
    """
    from datasets import Dataset, Features, Value

    by_id = {r.id: r for r in records}
    table = Dataset.from_dict({"id": [r.id for r in records]})
    out_features = Features({**features(), "reject_kind": Value("string"), "reject_reason": Value("string")})

    def tok(batch: dict[str, list]) -> dict[str, list]:
        recs = [by_id[i] for i in batch["id"]]
        rep = Report()
        examples = {e["id"]: e for e in tokenize_records(recs, tokenizer, cfg, rep, tag_id=tag_id)}
        why = {r.record_id: r for r in rep.rejected}
        cols: dict[str, list] = {k: [] for k in out_features}
        for r in recs:
            e = examples.get(r.id)
            if e is None:
                rej = why[r.id]
                e = {k: None for k in features()} | {"id": r.id, "group_id": r.group_id}
                e |= {"reject_kind": rej.kind, "reject_reason": f"{rej.where}\t{rej.reason}"}
            else:
                e = e | {"reject_kind": "", "reject_reason": ""}
            for k in cols:
                cols[k].append(e[k])
        return cols

    kwargs: dict[str, Any] = {}
    if cache_dir:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        kwargs["cache_file_name"] = str(Path(cache_dir) / f"tokenized-{_fingerprint(records, tokenizer, cfg)}.arrow")
    ds = table.map(tok, batched=True, batch_size=batch_size, features=out_features, desc="tokenising", **kwargs)
    kinds, reasons, ids = ds["reject_kind"], ds["reject_reason"], ds["id"]
    for kind, reason, rid in zip(kinds, reasons, ids, strict=True):
        if kind:
            where, _, msg = reason.partition("\t")
            report.reject(DataError(kind, msg, where, rid), stage="tokenize")
    dropped = [d for d, k in zip(ds["num_dropped_steps"], kinds, strict=True) if not k]
    if any(dropped):
        report.note("records_truncated", sum(1 for d in dropped if d))
        report.note("steps_truncated", sum(dropped))
    keep = [i for i, k in enumerate(kinds) if not k]
    return ds.select(keep).remove_columns(["reject_kind", "reject_reason"])


class SpareDataModule(L.LightningDataModule):
    """Step-annotated records as PRM training batches.

    Args:
        train: training files (file, folder of shards, glob, ``hf:NAME[:split]``, or a list).
        val: validation files; when absent, ``val_fraction`` of the training questions are held
            out by ``group_id``.
        test: test files (optional).
        format: reader name (``spare``, ``stepwise``, ``math_shepherd``, ``prm800k``,
            ``processbench``, ``gsm8k_solutions``).
        reader_options: keyword options of the reader (e.g. ``{add_reference: true}``).
        label_policy: label policies applied after reading, in order (``first_error``, ``hard``,
            ``soft``, ``outcome_only``, ``{name: consensus, field: mc_labels}``).
        tokenizer: tokenizer path or hub id (``tiny`` for the bundled one).
        template: ``chat`` or ``plain`` rendering.
        step_tag: the step tag (one token; added to the tokenizer when it is split).
        max_length: tokens per example; whole trailing steps are dropped to fit.
        batch_size: examples per batch per device.
        val_fraction: share of questions held out when ``val`` is not given.
        seed: seed of the hold-out split and of the sampler.
        group_by_length: batch examples of similar length (less padding).
        pack: pack each batch's examples into rows of ``max_length`` tokens (block-diagonal
            attention, see :class:`StepCollator`); fewer, fuller rows for short examples.
        num_workers: DataLoader workers.
        cache_dir: where to cache tokenised datasets (none: in memory).
        strict: stop at the first bad record instead of rejecting and reporting it.
    """

    def __init__(
        self,
        train: str | list[str] | None = None,
        val: str | list[str] | None = None,
        test: str | list[str] | None = None,
        format: str = "spare",
        reader_options: dict[str, Any] | None = None,
        label_policy: PolicySpec | list[PolicySpec] | None = None,
        tokenizer: str = "tiny",
        template: Literal["chat", "plain"] = "chat",
        step_tag: str = " ки",
        max_length: int = 512,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        seed: int = 0,
        group_by_length: bool = True,
        pack: bool = False,
        num_workers: int = 0,
        cache_dir: str | None = None,
        strict: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.format_config = FormatConfig(template=template, step_tag=step_tag, max_length=max_length)
        self.tokenizer = load_tokenizer(tokenizer)
        self.tag_id = prepare_tokenizer(self.tokenizer, self.format_config)
        self.report = Report(strict=strict)
        self.datasets: dict[str, Any] = {}
        self.records: dict[str, list[StepRecord]] = {}

    def _read(self, paths: str | list[str]) -> list[StepRecord]:
        hp = self.hparams
        records, _ = read_records(hp.format, paths, strict=hp.strict, report=self.report, **(hp.reader_options or {}))
        return apply_policies(records, hp.label_policy, self.report)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        if hp.train is not None:
            train = self._read(hp.train)
            if hp.val is not None:
                self.records["val"] = self._read(hp.val)
            elif hp.val_fraction > 0:
                train, self.records["val"] = split_by_group(train, hp.val_fraction, hp.seed)
            self.records["train"] = train
        elif hp.val is not None:
            self.records["val"] = self._read(hp.val)
        if hp.test is not None:
            self.records["test"] = self._read(hp.test)
        for split, recs in self.records.items():
            self.datasets[split] = tokenize_dataset(
                recs, self.tokenizer, self.format_config, self.report, self.tag_id, hp.cache_dir
            )

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set `data.{split}` (or val_fraction for val)")
        ds = self.datasets[split]
        hp = self.hparams
        collate = StepCollator(self.tokenizer.pad_token_id, pack_length=hp.max_length if hp.pack else None)
        if train:
            world = self.trainer.world_size if self.trainer is not None else 1
            rank = self.trainer.global_rank if self.trainer is not None else 0
            lengths = [len(x) for x in ds["input_ids"]] if hp.group_by_length else [0] * len(ds)
            sampler = LengthGroupedSampler(
                lengths, hp.batch_size, num_replicas=world, rank=rank, shuffle=True, seed=hp.seed,
                mega_batch_mult=50 if hp.group_by_length else 1,
            )
            return DataLoader(ds, batch_size=hp.batch_size, sampler=sampler, collate_fn=collate, num_workers=hp.num_workers)
        return DataLoader(ds, batch_size=hp.batch_size, shuffle=False, collate_fn=collate, num_workers=hp.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
