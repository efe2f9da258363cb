"""The DataModule: group-wise split, collator, length-grouped DDP sampler, caching, DDP sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spare_train.data import LengthGroupedSampler, PRMDataModule, StepCollator, split_by_group
from spare_train.data.prm import pack_rows
from spare_train.records import Prompt, StepRecord
from spare_train.records import IGNORE
from spare_train.synth import SynthConfig, generate, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def recs(n_groups: int, per_group: int = 4) -> list[StepRecord]:
    return [
        StepRecord(id=f"g{g}#{k}", group_id=f"g{g}", prompt=Prompt(f"q{g}"), steps=["a"], labels=[1.0])
        for g in range(n_groups)
        for k in range(per_group)
    ]


@pytest.fixture(scope="module")
def synth_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "train.jsonl"
    write_jsonl(generate(SynthConfig(num_questions=60, seed=3)), path)
    return path


def test_split_by_group_puts_no_question_on_both_sides():
    train, val = split_by_group(recs(50), 0.2, seed=0)
    tg, vg = {r.group_id for r in train}, {r.group_id for r in val}
    assert not tg & vg and len(vg) == 10 and len(train) + len(val) == 200
    assert all(len([r for r in val if r.group_id == g]) == 4 for g in vg)


def test_split_by_group_is_seeded_and_independent_of_record_order():
    a = {r.group_id for r in split_by_group(recs(50), 0.2, seed=0)[1]}
    b = {r.group_id for r in split_by_group(list(reversed(recs(50))), 0.2, seed=0)[1]}
    c = {r.group_id for r in split_by_group(recs(50), 0.2, seed=1)[1]}
    assert a == b and a != c


def test_split_refuses_to_hold_out_everything():
    with pytest.raises(ValueError, match="too few"):
        split_by_group(recs(1), 0.5, seed=0)


def test_collator_pads_right_and_marks_steps():
    ex = [
        {"id": "a", "group_id": "g", "input_ids": [5, 6, 7], "label_positions": [2], "step_labels": [1.0],
         "outcome": 1.0, "answer": "3"},
        {"id": "b", "group_id": "g", "input_ids": [5, 9, 8, 7, 9], "label_positions": [1, 4],
         "step_labels": [0.0, IGNORE], "outcome": float("nan"), "answer": ""},
    ]
    b = StepCollator(pad_id=0)(ex)
    assert b["input_ids"].tolist() == [[5, 6, 7, 0, 0], [5, 9, 8, 7, 9]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert b["label_positions"].tolist() == [[2, 0], [1, 4]]
    assert b["step_labels"].tolist() == [[1.0, IGNORE], [0.0, IGNORE]]
    assert b["step_mask"].tolist() == [[True, False], [True, True]]
    assert b["outcome"][0] == 1.0 and torch.isnan(b["outcome"][1])
    assert b["ids"] == ["a", "b"] and b["answers"] == ["3", ""]


def test_length_grouped_sampler_groups_lengths_and_reshuffles_per_epoch():
    lengths = [(i * 37) % 101 for i in range(400)]
    s = LengthGroupedSampler(lengths, batch_size=8, shuffle=True, seed=0, mega_batch_mult=10)
    batches = s.batches()
    assert sorted(i for b in batches for i in b) == list(range(400))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # random batches of 8 from 0..100 would spread ~75
    first = [list(b) for b in batches]
    assert s.batches() == first
    s.set_epoch(1)
    assert s.batches() != first


def test_length_grouped_sampler_steps_come_in_random_order_not_long_to_short_sweeps():
    """Batches are sorted inside a mega-batch; yielding them in that order trains on 50 batches
    from longest to shortest again and again. Steps must come shuffled: about half of the
    neighbouring steps grow in length, and one process without accumulation shuffles batches."""
    lengths = [(i * 37) % 101 for i in range(4000)]
    for step_batches in (1, 2):
        s = LengthGroupedSampler(lengths, 8, seed=0, mega_batch_mult=50, step_batches=step_batches)
        longest = [max(lengths[i] for i in b) for b in s.batches()[::step_batches]]
        growing = sum(b > a for a, b in zip(longest, longest[1:])) / (len(longest) - 1)
        assert 0.35 < growing < 0.65, growing


def test_length_grouped_sampler_shards_disjointly_with_equal_counts():
    lengths = list(range(103))
    shards = [LengthGroupedSampler(lengths, 4, num_replicas=2, rank=r, seed=5).batches() for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 13
    flat = [sorted(i for b in sh for i in b) for sh in shards]
    assert len(set(flat[0]) | set(flat[1])) == 103  # everything seen; 1 index repeated to even out
    assert len(flat[0]) + len(flat[1]) == 104


def test_datamodule_end_to_end_on_synthetic_spare_data(synth_file, tmp_path):
    dm = PRMDataModule(train=str(synth_file), tokenizer="tiny", batch_size=4, val_fraction=0.2, seed=0,
                         cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    assert dm.report.read == 240 and dm.report.kept == 240
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 240
    assert not {r.group_id for r in dm.records["train"]} & {r.group_id for r in dm.records["val"]}
    batch = next(iter(dm.train_dataloader()))
    ids = batch["input_ids"]
    picked = ids.gather(1, batch["label_positions"])
    assert (picked[batch["step_mask"]] == dm.tag_id).all()
    assert ((batch["step_labels"] == 0) | (batch["step_labels"] == 1))[batch["step_mask"]].all()
    assert len(list((tmp_path / "cache").glob("prm-*"))) == 2
    # a second module over the same data hits the cache and reports the same
    dm2 = PRMDataModule(train=str(synth_file), tokenizer="tiny", batch_size=4, val_fraction=0.2, seed=0,
                        cache_dir=str(tmp_path / "cache"))
    dm2.setup("fit")
    assert dm2.datasets["train"]["input_ids"] == dm.datasets["train"]["input_ids"]
    assert len(list((tmp_path / "cache").glob("prm-*"))) == 2


def test_cache_hit_reports_what_tokenising_reported(synth_file, tmp_path):
    """Rejections and truncations of a cached tokenisation are replayed into the new report."""
    kw = dict(train=str(synth_file), tokenizer="tiny", max_length=75, val_fraction=0.0, cache_dir=str(tmp_path))
    first = PRMDataModule(**kw)
    first.setup("fit")
    second = PRMDataModule(**kw)
    second.setup("fit")
    assert first.report.notes["records_truncated"] > 0
    assert second.report.to_dict() == first.report.to_dict()


def test_datamodule_reports_too_long_records_and_keeps_the_sum(synth_file):
    dm = PRMDataModule(train=str(synth_file), tokenizer="tiny", max_length=75, val_fraction=0.0)
    dm.setup("fit")
    rep = dm.report
    assert rep.read == 240 and rep.kept + len(rep.rejected) == rep.read
    assert rep.notes["records_truncated"] > 0
    assert len(dm.datasets["train"]) == rep.kept


def test_datamodule_applies_label_policies(synth_file):
    dm = PRMDataModule(train=str(synth_file), tokenizer="tiny", val_fraction=0.0, label_policy=["first_error"])
    dm.setup("fit")
    for labels in dm.datasets["train"]["step_labels"]:
        assert 0.0 not in labels[:-1]  # nothing after the first error is left


DDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L, torch
    from spare_train.data import PRMDataModule

    class Spy(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []
        def training_step(self, batch, i):
            self.seen += batch["ids"]
            return (self.w * 0).sum() + self.w.sum() * 0
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)
        def on_train_end(self):
            with open(f"{sys.argv[2]}/rank{self.global_rank}.json", "w") as f:
                json.dump(self.seen, f)

    dm = PRMDataModule(train=sys.argv[1], tokenizer="tiny", batch_size=4, val_fraction=0.0)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Spy(), dm)
    """
)


@pytest.mark.slow
def test_datamodule_shards_across_two_ddp_processes_without_overlap(synth_file, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(script), str(synth_file), str(tmp_path)], env=env, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 120  # 240 records, 4 per batch, 30 batches per rank
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 240


def _ex(i: int, n: int, steps: int) -> dict:
    return {"id": f"e{i}", "group_id": "g", "input_ids": list(range(100 + i * 10, 100 + i * 10 + n)),
            "label_positions": list(range(n - steps, n)), "step_labels": [1.0] * steps, "outcome": 1.0,
            "answer": ""}


def test_packing_collator_packs_rows_and_offsets_positions():
    exs = [_ex(0, 6, 2), _ex(1, 3, 1), _ex(2, 5, 1), _ex(3, 4, 2)]
    b = StepCollator(pad_id=0, pack_length=10)(exs)
    # rows: [e0 (6) + e1 (3)], [e2 (5) + e3 (4)]
    assert b["input_ids"].shape == (2, 9) and b["label_rows"].tolist() == [0, 0, 1, 1]
    assert b["segment_ids"].tolist() == [[1] * 6 + [2] * 3, [1] * 5 + [2] * 4]
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1, 2]
    assert b["label_positions"].tolist() == [[4, 5], [8, 0], [4, 0], [7, 8]]
    for i, e in enumerate(exs):
        row = b["input_ids"][b["label_rows"][i]]
        got = row[b["label_positions"][i][b["step_mask"][i]]].tolist()
        assert got == [e["input_ids"][p] for p in e["label_positions"]]


def test_pack_rows_balances_rows_where_first_fit_pads():
    # first-fit in order: [6, 5], [5, 4] -> 2 rows x 11 tokens for 20 real; balanced: 2 x 10
    assert pack_rows([6, 5, 5, 4], 11) == [[0, 3], [1, 2]]


def test_pack_rows_keeps_one_example_a_row_when_packing_would_pad_more():
    assert pack_rows([5, 5, 5], 10) == [[0], [1], [2]]  # packed: 2 rows x 10 for 15 real tokens
    assert pack_rows([2, 2, 2, 2], 10) == [[0], [1], [2], [3]]  # a tie: no packing needed
    assert pack_rows([2, 2, 2, 1], 10) == [[0, 1, 2, 3]]


@pytest.mark.parametrize("seed", range(20))
def test_pack_rows_places_every_example_once_within_capacity_and_never_costs_more(seed):
    import random

    rng = random.Random(seed)
    lengths = [rng.randint(1, 40) for _ in range(rng.randint(1, 16))]
    rows = pack_rows(lengths, 48)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 48 and row == sorted(row) for row in rows)
    assert len(rows) * max(sum(lengths[i] for i in row) for row in rows) <= len(lengths) * max(lengths)


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_rows_give_the_same_hidden_states_at_tags_as_unpadded_examples(impl):
    from spare_train.assets import tiny_model
    from spare_train.prm.heads import packed_attention_mask

    model = tiny_model("llama").eval()
    model.set_attn_implementation(impl)
    exs = [_ex(0, 7, 3), _ex(1, 4, 2), _ex(2, 6, 1)]
    b = StepCollator(pad_id=0, pack_length=12)(exs)
    mask = packed_attention_mask(b["segment_ids"], impl, torch.float32)
    with torch.no_grad():
        h = model.model(b["input_ids"], attention_mask=mask, position_ids=b["position_ids"]).last_hidden_state
        for i, e in enumerate(exs):
            alone = model.model(torch.tensor([e["input_ids"]])).last_hidden_state[0, e["label_positions"]]
            packed = h[b["label_rows"][i], b["label_positions"][i][: len(e["label_positions"])]]
            torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)


def test_to_dataset_keeps_declared_types_and_minus_100():
    from spare_train.data.base import to_dataset
    from spare_train.tokenize import features

    ex = {"id": "a", "group_id": "g", "input_ids": [1, 2, 3], "label_positions": [1, 2], "step_labels": [IGNORE, 1.0],
          "num_steps": 2, "num_dropped_steps": 0, "outcome": float("nan"), "answer": "", "is_reference": False}
    ds = to_dataset([ex, {**ex, "id": "b", "step_labels": [0.0, 0.5]}], features())
    assert ds.features == features()
    assert ds[0]["step_labels"] == [IGNORE, 1.0] and ds[1]["step_labels"] == [0.0, 0.5]


def test_cached_dataset_fingerprints_only_when_caching(synth_file):
    from spare_train.data.base import cached_dataset
    from spare_train.report import Report
    from spare_train.tokenize import features

    def name() -> str:
        raise AssertionError("no cache_dir: nothing to fingerprint")

    ds = cached_dataset(None, name, lambda rep: [], features(), Report())
    assert len(ds) == 0
