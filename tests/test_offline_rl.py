"""Tokenisation with step indices, the reference model variants, every objective on a tiny model,
and export of the trained policy."""

from __future__ import annotations

import pytest
import torch

from spare_train import synth
from spare_train.assets import tiny_model, tiny_tokenizer
from spare_train.offline_rl import OfflineRLModule
from spare_train.offline_rl_data import (
    FilterConfig,
    OfflineRLDataModule,
    PairingConfig,
    PolicyCollator,
    make_examples,
    tokenize_completions,
    truncate,
)
from spare_train.records import Prompt, StepRecord

VIEWS = {
    "sft": "filtered",
    "rft": "filtered",
    "step_weighted_sft": "all",
    "dpo": "pairs",
    "ipo": "pairs",
    "orpo": "pairs",
    "step_weighted_dpo": "pairs",
    "step_dpo": "step_pairs",
    "kto": "unpaired",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models run faster single-threaded, and CI shares its cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("orl") / "train.jsonl"
    synth.write_jsonl(synth.generate(6, seed=3, candidates_per_question=4, max_ops=3), path)
    return str(path)


def datamodule(path: str, view: str, **kw) -> OfflineRLDataModule:
    dm = OfflineRLDataModule(
        path, val_files=path, view=view, read_options={"add_reference": True},
        pairing=PairingConfig(reference_as_chosen=True, max_pairs_per_question=4),
        filtering=FilterConfig(include_reference=True), batch_size=4, max_length=160, **kw,
    )
    dm.setup("fit")
    return dm


def record(steps, labels, preamble="") -> StepRecord:
    return StepRecord("q#0", "q", Prompt("Start with 2. Add 3.", "Solve."), steps, labels, outcome=1, preamble=preamble)


# ------------------------------------------------------------------------------ tokenisation
def test_tokens_carry_their_step_index_and_prompt_never_carries_loss():
    tok = tiny_tokenizer()
    rec = record(["2 + 3 = 5", "The answer is 5."], [1.0, None], preamble="Let's think.")
    (prompt,), (comp,) = tokenize_completions([rec], tok)
    assert tok.decode(prompt).endswith("<|assistant|>\n")
    ids, steps = comp["response_ids"], comp["step_ids"]
    for i, text in enumerate(rec.steps):
        assert tok.decode([t for t, s in zip(ids, steps) if s == i]).strip() == text
    assert tok.decode([t for t, s in zip(ids, steps) if s == -1]) == "Let's think.\n\n<|end|>"
    assert ids[-1] == tok.eos_token_id
    assert comp["step_labels"][0] == 1.0 and comp["step_labels"][1] != comp["step_labels"][1]  # NaN

    ex, _ = make_examples([[rec]], tok)
    b = PolicyCollator(0)(ex)
    assert not b["loss_mask"][0, : len(prompt)].any() and b["loss_mask"][0, len(prompt) :].all()
    assert (b["step_ids"][0, : len(prompt)] == -1).all()


def test_truncation_cuts_prompt_from_the_left_then_responses_from_the_right():
    c = [{"response_ids": [1, 2, 3, 4], "step_ids": [0, 0, 1, 1]}, {"response_ids": [5, 6], "step_ids": [0, 0]}]
    p, out = truncate(list(range(10, 20)), c, max_length=8, max_prompt_length=5)
    assert p == [15, 16, 17, 18, 19]  # shared by both completions
    assert out[0]["response_ids"] == [1, 2, 3] and out[0]["step_ids"] == [0, 0, 1]
    assert out[1]["response_ids"] == [5, 6]
    p, out = truncate([1, 2], c, max_length=8, max_prompt_length=5)
    assert p == [1, 2] and out[0]["response_ids"] == [1, 2, 3, 4]  # fits: untouched
    assert truncate(list(range(10)), c, max_length=8, max_prompt_length=None) is None


def test_pair_batches_put_chosen_rows_first(data_file):
    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    B = batch["first_error"].shape[0]
    assert batch["input_ids"].shape[0] == 2 * B and batch["num_completions"] == 2
    assert all(i.endswith("#ref") for i in batch["ids"][:B])
    assert (batch["first_error"] >= 0).all()


# ------------------------------------------------------------------------------ reference
def _lora(model):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():  # make the adapters matter
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return peft_model


def test_adapter_disabled_reference_equals_frozen_copy(data_file):
    batch = next(iter(datamodule(data_file, "pairs").val_dataloader()))
    lora = OfflineRLModule.from_model(_lora(tiny_model("llama", seed=0)), objective="dpo")
    assert lora.reference_mode == "adapter"
    frozen = OfflineRLModule.from_model(tiny_model("llama", seed=0), objective="dpo")
    assert frozen.reference_mode == "copy" and "_frozen" not in str(list(frozen.state_dict())[:1])
    a, b = lora.reference_logps(batch), frozen.reference_logps(batch)
    mask = batch["loss_mask"]
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    assert not torch.allclose(lora.token_logps(batch)[mask], a[mask], atol=1e-3)  # adapters on differ


def test_precomputed_reference_equals_on_the_fly(data_file):
    dm = datamodule(data_file, "pairs")
    module = OfflineRLModule.from_model(_lora(tiny_model("llama", seed=0)), objective="dpo", reference="precomputed")
    module.precompute_reference(dm)
    cached = next(iter(dm.val_dataloader()))
    assert "ref_logps" in cached
    live = {k: v for k, v in cached.items() if k != "ref_logps"}
    with module.policy.disable_adapter(), torch.no_grad():
        expect = module.token_logps(live)
    mask = cached["loss_mask"]
    assert torch.allclose(cached["ref_logps"][mask], expect[mask], atol=1e-5)
    assert torch.equal(module.reference_logps(cached), cached["ref_logps"])


# ------------------------------------------------------------------------------ objectives
def test_nll_weight_adds_the_chosen_answers_nll_to_dpo(data_file):
    from spare_train import losses as F_

    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    plain = OfflineRLModule.from_model(tiny_model("llama", seed=0), objective="dpo", reference="copy")
    rpo = OfflineRLModule.from_model(tiny_model("llama", seed=0), objective="dpo", reference="copy", nll_weight=0.7)
    with torch.no_grad():
        base, _ = plain.compute_loss(batch)
        got, metrics = rpo.compute_loss(batch)
        B = batch["input_ids"].shape[0] // 2
        nll = F_.sft_loss(rpo.token_logps(batch)[:B], batch["loss_mask"][:B])
    assert nll > 0 and torch.allclose(metrics["nll"], nll)
    assert torch.allclose(got, base + 0.7 * nll, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(VIEWS))
def test_each_objective_lowers_its_loss(data_file, objective):
    torch.manual_seed(0)
    dm = datamodule(data_file, VIEWS[objective])
    batch = next(iter(dm.val_dataloader()))
    kw = {"step_dpo_steps": 1} if objective == "step_dpo" else {}
    module = OfflineRLModule.from_model(tiny_model("llama", seed=0), objective=objective, beta=0.5, **kw)
    opt = torch.optim.AdamW([p for p in module.policy.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(6):
        loss, metrics = module.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(torch.isfinite(v).all() for v in metrics.values() if v.numel())
    if objective in ("dpo", "ipo", "step_dpo", "step_weighted_dpo"):
        assert metrics["rewards/margin"] > 0 and "kl" in metrics


@pytest.mark.slow
def test_lightning_fit_with_precomputed_reference_and_lora(data_file, tmp_path):
    import lightning as L

    from spare_train.backbone import BackboneConfig, LoraSettings

    dm = datamodule(data_file, "pairs")
    cfg = BackboneConfig("tiny-llama", lora=LoraSettings(r=4, alpha=8))
    module = OfflineRLModule(cfg, objective="dpo", reference="precomputed", lr=1e-3)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path, limit_val_batches=1, num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    assert dm.reference_cached
    assert {"train/loss", "val/rewards/accuracy", "val/kl"} <= set(trainer.logged_metrics)


# ------------------------------------------------------------------------------ export
@pytest.mark.slow
def test_export_reloads_with_identical_logps_and_generates(data_file, tmp_path):
    from transformers import AutoModelForCausalLM

    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    module = OfflineRLModule.from_model(_lora(tiny_model("llama", seed=0)), objective="orpo")
    module.policy.eval()
    with torch.no_grad():
        before = module.token_logps(batch)
    module.export(str(tmp_path / "policy"), dm.tokenizer, merge=True)
    with torch.no_grad():  # merging worked on a copy: the module is unchanged
        assert torch.equal(module.token_logps(batch), before)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    with torch.no_grad():
        after = module.token_logps(batch, reloaded)
    mask = batch["loss_mask"]
    assert torch.allclose(before[mask], after[mask], atol=1e-4)
    prompt = torch.tensor([dm.datasets["val"][0]["prompt_ids"]])
    out = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=dm.tokenizer.pad_token_id)
    assert out.shape[1] > prompt.shape[1]


def test_precomputed_reference_needs_the_pre_pass(data_file):
    batch = next(iter(datamodule(data_file, "pairs").val_dataloader()))
    module = OfflineRLModule.from_model(tiny_model("llama"), objective="dpo", reference="precomputed")
    with pytest.raises(RuntimeError, match="pre-pass"):
        module.compute_loss(batch)
    with pytest.raises(ValueError, match="needs pairs"):
        OfflineRLModule.from_model(tiny_model("llama"), objective="dpo").compute_loss(
            next(iter(datamodule(data_file, "filtered").val_dataloader()))
        )


@pytest.mark.slow
def test_cli_export_of_a_trained_policy_checkpoint(data_file, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from transformers import AutoModelForCausalLM

    from spare_train.backbone import BackboneConfig, LoraSettings
    from spare_train.export import main as export_main

    dm = datamodule(data_file, "pairs")
    module = OfflineRLModule(BackboneConfig("tiny-llama", lora=LoraSettings(r=4, alpha=8)), objective="orpo", lr=1e-2)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, callbacks=[ckpt_cb], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(module, dm)
    assert trainer.global_step == 2 and ckpt_cb.last_model_path

    out = tmp_path / "policy"
    assert export_main([ckpt_cb.last_model_path, str(out), "--merge"]) == 0
    assert not (out / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = next(iter(dm.val_dataloader()))
    module.policy.eval()
    with torch.no_grad():
        before, after = module.token_logps(batch), module.token_logps(batch, reloaded)
        with module.policy.disable_adapter():  # the 2 steps moved the policy off its base
            base = module.token_logps(batch)
    mask = batch["loss_mask"]
    assert torch.allclose(before[mask], after[mask], atol=1e-4)
    assert not torch.allclose(before[mask], base[mask], atol=1e-4)
    prompt = torch.tensor([dm.datasets["val"][0]["prompt_ids"]])
    gen = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=dm.tokenizer.pad_token_id)
    assert gen.shape[1] > prompt.shape[1]

    from peft import AutoPeftModelForCausalLM

    assert export_main([ckpt_cb.last_model_path, str(tmp_path / "adapter")]) == 0  # no --merge: a peft adapter
    adapter = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(before[mask], module.token_logps(batch, adapter)[mask], atol=1e-4)
