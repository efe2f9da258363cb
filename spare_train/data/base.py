"""The data path both training stacks share: read → label policies → report → group-wise split →
tokenise → a ``datasets.Dataset`` with explicit Features, cached on disk.

:class:`AnnotationDataModule` holds every step but the last two; a subclass says how records
become examples (:meth:`AnnotationDataModule.build_examples`) and how they are batched. So the
PRM and the policy DataModules take the same argument names, print the same read report, keep it
in the checkpoint (``state_dict``) and honour ``strict`` the same way.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from spare_train.data.sampler import LengthGroupedSampler
from spare_train.formats import read_records
from spare_train.labels import PolicySpec, apply_policies
from spare_train.records import StepRecord
from spare_train.report import DataError, Report
from spare_train.tokenize import FormatConfig, load_tokenizer, prepare_tokenizer

SPLITS = ("train", "val", "test")


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
    return [r for r in records if r.group_id not in val_groups], [r for r in records if r.group_id in val_groups]


def records_fingerprint(records: Sequence[StepRecord], *parts: Any) -> str:
    """A hash of everything a tokenised dataset depends on (records, tokenizer, options)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=str).encode())
    for r in records:
        h.update(json.dumps([r.id, r.group_id, r.prompt.__dict__, r.preamble, r.steps, r.labels, r.outcome,
                             r.answer, r.is_reference]).encode())  # fmt: skip
    return h.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what tokenising depends on. A fast tokenizer hashes its whole serialised form
    (vocabulary, merges, added tokens, normalizer): 4x quicker than the sorted vocabulary for
    Qwen3's 151k tokens, and it sees merges too."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(str(getattr(tokenizer, "chat_template", "")).encode())
    h.update(str([tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token]).encode())
    return h.hexdigest()[:24]


def to_dataset(examples: list[dict[str, Any]], features: Any) -> Any:
    """Examples (dicts with the keys of ``features``) as an in-memory ``datasets.Dataset``.

    Built as one Arrow table from the columns (``features``' schema, so label columns keep their
    declared types): half the time of ``Dataset.from_dict``, which converts through its own typed
    sequences first.
    """
    import pyarrow as pa
    from datasets import Dataset

    columns = {k: [e[k] for e in examples] for k in features}
    return Dataset(pa.Table.from_pydict(columns, schema=features.arrow_schema))


def cached_dataset(cache_dir: str | None, name: Callable[[], str], build: Any, features: Any, report: Report) -> Any:
    """``build(report) -> list[dict]`` as a ``datasets.Dataset`` with ``features``, cached under
    ``cache_dir/name()`` together with what building it reported (its rejections, repairs with
    their ``file:line``, notes), which is merged into ``report`` on a build and on a cache hit
    alike (a strict ``report`` raises on the first rejection or label-changing repair either way).

    ``name`` is called only with a ``cache_dir``: fingerprinting the records and the tokenizer
    costs about as much as tokenising when nothing is cached.
    """
    from datasets import load_from_disk

    folder = Path(cache_dir) / name() if cache_dir else None
    if folder is not None and (folder / "events.json").is_file():
        report.merge(Report.from_dict(json.loads((folder / "events.json").read_text())))
        return load_from_disk(str(folder))
    local = Report(strict=report.strict)
    ds = to_dataset(build(local), features)
    report.merge(local)
    if folder is not None:  # written under a temporary name, then renamed: never a partial cache
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        (tmp / "events.json").write_text(json.dumps(local.to_dict()))
        try:
            tmp.replace(folder)
        except OSError:  # another process (a DDP rank) wrote the same cache first
            shutil.rmtree(tmp, ignore_errors=True)
        ds = load_from_disk(str(folder))
    return ds


class AnnotationDataModule(L.LightningDataModule):
    """Step-annotated records as batches; subclasses turn records into examples.

    Args:
        train: training files (file, folder of shards, glob, ``hf:NAME[:split]``, or a list).
        val: validation files; when absent, ``val_fraction`` of the training questions are held
            out by ``group_id``.
        test: test files (optional).
        format: reader name (``spare``, ``stepwise``, ``math_shepherd``, ``prm800k``,
            ``processbench``, ``gsm8k_solutions``, ``critique``; see ``spare-train data convert --help``).
        reader_options: keyword options of the reader (e.g. ``{add_reference: true}``).
        label_policy: label policies applied after reading, in order (``first_error``, ``hard``,
            ``soft``, ``outcome_only``, ``{name: consensus, field: mc_labels}``).
        tokenizer: tokenizer path or hub id (``tiny`` for the bundled one).
        template: ``chat`` (the tokenizer's chat template) or ``plain`` rendering.
        max_length: tokens per example.
        batch_size: examples per batch per device.
        val_fraction: share of questions held out when ``val`` is not given.
        seed: seed of the hold-out split and of the sampler.
        group_by_length: batch examples of similar length (less padding).
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
        max_length: int = 512,
        batch_size: int = 8,
        val_fraction: float = 0.1,
        seed: int = 0,
        group_by_length: bool = True,
        num_workers: int = 0,
        cache_dir: str | None = None,
        strict: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.report = Report(strict=strict)
        self.records: dict[str, list[StepRecord]] = {}
        self.datasets: dict[str, Any] = {}
        self._tokenizer: Any = None
        self._resume_position: tuple[int, int] | None = None  # from a checkpoint, for the train sampler
        self._train_sampler: LengthGroupedSampler | None = None

    # ---- what the model is linked to (spare-train fit passes these to the LightningModule) ----
    @property
    def tokenizer_name(self) -> str:
        return self.hparams.tokenizer

    @property
    def format_config(self) -> FormatConfig:
        """How a record becomes model input; the model's export and scoring use the same."""
        return FormatConfig(template=self.hparams.template, max_length=self.hparams.max_length)

    @property
    def tokenizer(self) -> Any:
        """Loaded on first use, prepared for :attr:`format_config` (building the module stays cheap)."""
        if self._tokenizer is None:
            tok = load_tokenizer(self.hparams.tokenizer)
            self.tag_id = prepare_tokenizer(tok, self.format_config)
            self._tokenizer = tok
        return self._tokenizer

    # ---- read → policies → split ---------------------------------------------------------------
    def read(self, paths: str | list[str]) -> list[StepRecord]:
        """Records of ``paths`` after the label policies; ``DataError`` (``nothing_kept``) when none
        is left: a split that silently became empty would train or validate on nothing."""
        hp = self.hparams
        mine = Report(strict=hp.strict)
        records, _ = read_records(hp.format, paths, report=mine, **(hp.reader_options or {}))
        records = apply_policies(records, hp.label_policy, mine)
        self.report.merge(mine)
        mine.check_kept(str(paths))
        return records

    def read_splits(self) -> dict[str, list[StepRecord]]:
        """Records of every configured split (``val`` held out of ``train`` when not given)."""
        hp = self.hparams
        out: dict[str, list[StepRecord]] = {}
        if hp.train is not None:
            train = self.read(hp.train)
            if hp.val is not None:
                out["val"] = self.read(hp.val)
            elif hp.val_fraction > 0:
                train, out["val"] = split_by_group(train, hp.val_fraction, hp.seed)
            out["train"] = train
        elif hp.val is not None:
            out["val"] = self.read(hp.val)
        if hp.test is not None:
            out["test"] = self.read(hp.test)
        return out

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self.records = self.read_splits()
        for split, recs in self.records.items():
            self.datasets[split] = self.build_dataset(split, recs)
        if not any(len(ds) for ds in self.datasets.values()):
            raise DataError("no_examples", f"no usable examples in any split\n{self.report.summary()}")
        if self.trainer is None or self.trainer.is_global_zero:
            print(self.summary(), file=sys.stderr)

    def summary(self) -> str:
        """The read report and the size of every split (printed at setup)."""
        lines = [self.report.summary()]
        lines += [f"{split}: {len(ds)} examples from {len(self.records.get(split, []))} records"
                  for split, ds in self.datasets.items()]  # fmt: skip
        return "\n".join(lines)

    def build_dataset(self, split: str, records: list[StepRecord]) -> Any:
        """Turn one split's records into a dataset (subclasses)."""
        raise NotImplementedError

    # ---- batches --------------------------------------------------------------------------------
    def collator(self) -> Any:
        raise NotImplementedError

    def example_lengths(self, ds: Any) -> list[int]:
        """Token count of each example, for length-grouped batches."""
        raise NotImplementedError

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"no {split} data: set `data.{split}` (or val_fraction for val)")
        ds, hp = self.datasets[split], self.hparams
        # a loader's own generator: creating its iterator then never draws from the global RNG,
        # which dropout uses (so a resumed run draws the masks an uninterrupted one draws)
        generator = torch.Generator().manual_seed(hp.seed)
        if not train:
            return DataLoader(ds, batch_size=hp.batch_size, shuffle=False, collate_fn=self.collator(),
                              num_workers=hp.num_workers, generator=generator)  # fmt: skip
        trainer = self.trainer
        lengths = self.example_lengths(ds) if hp.group_by_length else [0] * len(ds)
        world, accumulate = (trainer.world_size, trainer.accumulate_grad_batches) if trainer else (1, 1)
        sampler = LengthGroupedSampler(
            lengths, hp.batch_size, num_replicas=world, rank=trainer.global_rank if trainer else 0, shuffle=True,
            seed=hp.seed, mega_batch_mult=50 if hp.group_by_length else 1, step_batches=world * accumulate,
        )  # fmt: skip
        if trainer is not None:
            sampler.set_epoch(trainer.current_epoch)  # workers may draw indices before Lightning sets it
        if self._resume_position is not None:
            sampler.resume(*self._resume_position)
            self._resume_position = None
        self._train_sampler = sampler
        return DataLoader(ds, batch_size=hp.batch_size, sampler=sampler, collate_fn=self.collator(),
                          num_workers=hp.num_workers, generator=generator)  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", train=False) if "val" in self.datasets else []  # no val split: no val loop

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    # ---- checkpoints keep the read report and the sampler position ----------------------------
    def train_position(self) -> tuple[int, int] | None:
        """``(epoch, batches of it trained on)`` during ``fit``: where a resumed run continues."""
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        epoch, done = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.ready
        if done >= trainer.num_training_batches:  # saved at the end of the epoch: the next starts afresh
            return epoch + 1, 0
        return epoch, done

    def state_dict(self) -> dict[str, Any]:
        return {"read_report": self.report.to_dict(max_rejections=100), "train_position": self.train_position()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.resumed_report = state_dict.get("read_report")
        position = state_dict.get("train_position")
        self._resume_position = tuple(position) if position else None
        sampler = self._train_sampler
        if sampler is not None and self._resume_position is not None:
            # strategies that restore after set-up (FSDP2) built the train loader before this load:
            # its sampler has not started yet (num_workers=0), so it can still skip
            if sampler.started and self.hparams.num_workers > 0:
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn("resuming mid-epoch with data.num_workers > 0 under this strategy: the workers "
                               "fetched batches before the checkpoint loaded, so the epoch restarts its order; "
                               "set data.init_args.num_workers: 0 for an exact resume")  # fmt: skip
            sampler.resume(*self._resume_position)
            self._resume_position = None
