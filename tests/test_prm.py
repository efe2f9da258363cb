"""PRMModule: LoRA / QLoRA training on a tiny model, validation metrics, LoRA-only checkpoints, exact resume."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_backbone import tiny_folder
from torch.utils.data import DataLoader

from spare_train.models.backbone import BackboneConfig, LoraSettings
from spare_train.data import StepCollator
from spare_train.prm import PRMModule
from spare_train.records import Prompt, StepRecord
from spare_train.tokenize import FormatConfig, tokenize_records

STEPS = [
    ["3 * 4 = 12", "2 + 12 = 14", "The answer is 14."],
    ["2 + 3 = 5", "5 * 4 = 20", "The answer is 20."],
    ["48 / 2 = 24", "48 + 24 = 72"],
    ["x - y = 7", "so 10 - 3 = 7", "step two", "The answer is 7."],
]
LABELS = [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.8], [1.0, 0.0, None, 0.0]]


def records(n: int = 8) -> list[StepRecord]:
    out = []
    for i in range(n):
        k = i % len(STEPS)
        out.append(
            StepRecord(
                id=f"r{i}", group_id=f"q{k}", prompt=Prompt("What is 2 + 3 * 4?", instruction="Solve step by step."),
                steps=STEPS[k], labels=LABELS[k], outcome=int(LABELS[k][-1] == 1.0), answer=STEPS[k][-1][-3:],
            )
        )  # fmt: skip
    return out


def loader(module: PRMModule, n: int = 8, batch_size: int = 4) -> DataLoader:
    tok = module.tokenizer
    examples = tokenize_records(records(n), tok, module.format_config)
    return DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=StepCollator(tok.pad_token_id))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("tiny"))


def trainer(**kw) -> L.Trainer:
    defaults = dict(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    return L.Trainer(**{**defaults, **kw})


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.values.append(float(outputs["loss"]))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NF4 weights are packed bytes stored as floats: some read as NaN)."""
    return a.dtype == b.dtype and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def frozen_state(module: PRMModule) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}


@pytest.mark.slow
@pytest.mark.parametrize("quant", [None, "nf4"])
def test_lora_and_qlora_learn_and_leave_frozen_weights(folder, quant):
    L.seed_everything(0)
    bb = BackboneConfig(name_or_path=folder, quantization=quant, lora=LoraSettings(r=8, alpha=16, dropout=0.0))
    module = PRMModule(backbone=bb, lr=3e-3, scheduler="constant")
    module.configure_model()
    before = frozen_state(module)
    assert before, "a LoRA backbone has frozen weights"
    losses = Losses()
    data = loader(module, n=4)
    trainer(max_steps=16, callbacks=[losses]).fit(module, data)
    assert sum(losses.values[-3:]) / 3 < 0.75 * losses.values[0], losses.values
    after = frozen_state(module)
    assert after.keys() == before.keys()
    changed = [k for k in before if not same_bits(before[k], after[k])]
    assert not changed, changed


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_classifier_head_trains_and_validates(folder, kind):
    L.seed_everything(0)
    module = PRMModule(backbone=BackboneConfig(name_or_path=folder), head="classifier", classifier_type=kind, lr=1e-3)
    module.configure_model()
    assert not hasattr(module.model, "lm_head")  # headless body for a classifier
    data = loader(module)
    t = trainer(max_epochs=2, limit_val_batches=2)
    first = t.validate(module, data, verbose=False)[0]["val/loss"]
    t.fit(module, data, data)
    metrics = t.callback_metrics
    assert float(metrics["val/loss"]) < first
    # 8 records, labels of LABELS repeated: 11 labeled steps per 4 records
    assert float(metrics["val/step/num_steps"]) == 22


def _snapshot(module: PRMModule, trainer: L.Trainer):
    params = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    state = trainer.optimizers[0].state_dict()["state"]
    return params, state


@pytest.mark.slow
def test_checkpoint_keeps_trainable_tensors_and_resume_is_exact(folder, tmp_path):
    bb = BackboneConfig(name_or_path=folder, lora=LoraSettings(r=4, alpha=8, dropout=0.1))

    def fresh():
        L.seed_everything(0)
        m = PRMModule(backbone=bb, lr=1e-3, warmup_ratio=0.25, weight_decay=0.01)
        return m

    # uninterrupted: 3 epochs of 2 batches, keeping the checkpoint after the first epoch
    ck = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full = fresh()
    t1 = trainer(max_epochs=3, callbacks=[ck], enable_checkpointing=True)
    t1.fit(full, loader(full))
    want_params, want_state = _snapshot(full, t1)

    ckpt = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == {n for n, p in full.named_parameters() if p.requires_grad}
    assert ckpt["hyper_parameters"]["prompt_format"]["step_tag"] == " ки"
    assert len(ckpt["rng_states_per_rank"]) == 1

    resumed = fresh()
    t2 = trainer(max_epochs=3)
    t2.fit(resumed, loader(resumed), ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    got_params, got_state = _snapshot(resumed, t2)
    assert t2.global_step == t1.global_step == 6
    assert got_params.keys() == want_params.keys()
    for k in want_params:
        assert torch.equal(got_params[k], want_params[k]), k
    for i, s in want_state.items():
        for key, v in s.items():
            assert torch.equal(torch.as_tensor(got_state[i][key]), torch.as_tensor(v)), (i, key)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["lm_tokens", "classifier"])
def test_packed_batches_give_the_unpacked_loss_and_gradients(folder, head):
    """data.pack: examples packed into rows (block-diagonal attention, restarted positions) train
    exactly as the same examples padded one per row."""
    L.seed_everything(0)
    module = PRMModule(backbone=BackboneConfig(name_or_path=folder, attn_implementation="sdpa"), head=head)
    module.configure_model()
    module.model.eval()  # no dropout: the two passes must see the same network
    examples = tokenize_records(records(8), module.tokenizer, module.format_config)
    tok = module.tokenizer

    def loss_and_grads(batch):
        module.zero_grad()
        loss = module.loss(module(batch), batch)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    padded = StepCollator(tok.pad_token_id)(examples)
    packed = StepCollator(tok.pad_token_id, pack_length=400)(examples)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]  # really packed
    want, want_g = loss_and_grads(padded)
    got, got_g = loss_and_grads(packed)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_g.keys() == want_g.keys()
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_pack_option_trains_through_the_datamodule(folder, tmp_path):
    """The recipe option itself: data.pack: true trains (it used to crash in the head gather)."""
    from spare_train.data import PRMDataModule
    from spare_train.synth import SynthConfig, generate, write_jsonl

    path = write_jsonl(generate(SynthConfig(num_questions=20, seed=1)), tmp_path / "s.jsonl")
    dm = PRMDataModule(train=str(path), tokenizer=folder, batch_size=8, max_length=256, pack=True, val_fraction=0.0)
    module = PRMModule(backbone=BackboneConfig(name_or_path=folder), lr=1e-3, prompt_format=dm.format_config)
    losses = Losses()
    trainer(max_steps=4, callbacks=[losses]).fit(module, dm)
    assert len(losses.values) == 4 and all(math.isfinite(v) for v in losses.values)


def test_validation_leaves_reference_solutions_out_of_the_metrics(folder):
    """As `spare-train evaluate`: a gold reference is not a candidate (it would make the oracle
    100 %), unless include_references."""
    from dataclasses import replace

    recs = records(4)
    gold = replace(recs[1], id="q1#ref", labels=[1.0, 1.0, 1.0], outcome=1, answer="20", is_reference=True)
    results = {}
    for include in (False, True):
        L.seed_everything(0)
        module = PRMModule(backbone=BackboneConfig(name_or_path=folder), include_references=include)
        module.configure_model()
        examples = tokenize_records([*recs, gold], module.tokenizer, module.format_config)
        batches = DataLoader(examples, batch_size=2, collate_fn=StepCollator(module.tokenizer.pad_token_id))
        results[include] = trainer().validate(module, batches, verbose=False)[0]
    assert results[False]["val/bon/oracle"] == 0.25  # only q0 of the four questions has a right candidate
    assert results[True]["val/bon/oracle"] == 0.5  # the gold answer "solves" q1
    assert results[False]["val/bon/num_questions"] == results[True]["val/bon/num_questions"] == 4
