"""The policy stack: tokenisation with step indices, the reference model variants (adapter, copy,
precomputed by the callback), every objective component on a tiny model, KTO's mismatched-pair
reference point, and export of the trained policy."""

from __future__ import annotations

import json

import types

import pytest
import torch

from spare_train import synth
from spare_train.assets import tiny_model, tiny_tokenizer
from spare_train.data import FilterConfig, PairingConfig, PolicyCollator, PolicyDataModule
from spare_train.data.policy import make_examples, record_turn, tokenize_turns, truncate
from spare_train.policy import PolicyModule
from spare_train.policy import losses as F_
from spare_train.policy.objectives import DPO, KTO, OBJECTIVES, build_objective
from spare_train.records import IGNORE, Prompt, StepRecord


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
    cfg = synth.SynthConfig(num_questions=6, seed=3, candidates_per_question=4, max_ops=3)
    synth.write_jsonl(synth.generate(cfg), path)
    return str(path)


def datamodule(path: str, view: str, **kw) -> PolicyDataModule:
    dm = PolicyDataModule(
        train=path, val=path, view=view, reader_options={"add_reference": True}, tokenizer="tiny",
        pairing=PairingConfig(reference_as_chosen=True, max_pairs_per_question=4),
        filtering=FilterConfig(include_reference=True), batch_size=4, max_length=160, **kw,
    )  # fmt: skip
    dm.setup("fit")
    return dm


def logps(module: PolicyModule, batch: dict, model=None) -> torch.Tensor:
    return module.token_logps(batch["input_ids"], batch["attention_mask"], model)


def record(steps, labels, preamble="") -> StepRecord:
    return StepRecord("q#0", "q", Prompt("Start with 2. Add 3.", "Solve."), steps, labels, outcome=1, preamble=preamble)


# ------------------------------------------------------------------------------ tokenisation
def test_tokens_carry_their_step_index_and_prompt_never_carries_loss():
    tok = tiny_tokenizer()
    rec = record(["2 + 3 = 5", "The answer is 5."], [1.0, None], preamble="Let's think.")
    (prompt,), (comp,) = tokenize_turns([record_turn(rec)], tok)
    assert tok.decode(prompt).endswith("<|assistant|>\n")
    ids, steps = comp["response_ids"], comp["step_ids"]
    for i, text in enumerate(rec.steps):
        assert tok.decode([t for t, s in zip(ids, steps) if s == i]).strip() == text
    assert tok.decode([t for t, s in zip(ids, steps) if s == -1]) == "Let's think.\n\n<|end|>"
    assert ids[-1] == tok.eos_token_id
    assert comp["step_labels"] == [1.0, IGNORE]

    ex, _ = make_examples([[record_turn(rec)]], tok, ids=[["q#0"]], group_ids=["q"])
    b = PolicyCollator(0)(ex)
    assert not b["loss_mask"][0, : len(prompt)].any() and b["loss_mask"][0, len(prompt) :].all()
    assert (b["step_ids"][0, : len(prompt)] == -1).all()
    assert b["step_labels"].tolist() == [[1.0, IGNORE]]


def test_truncation_cuts_prompt_from_the_left_then_responses_from_the_right():
    c = [{"response_ids": [1, 2, 3, 4], "step_ids": [0, 0, 1, 1]}, {"response_ids": [5, 6], "step_ids": [0, 0]}]
    p, out = truncate(list(range(10, 20)), c, max_length=8, max_prompt_length=5)
    assert p == [15, 16, 17, 18, 19]  # shared by both completions
    assert out[0]["response_ids"] == [1, 2, 3] and out[0]["step_ids"] == [0, 0, 1]
    assert out[1]["response_ids"] == [5, 6]
    p, out = truncate([1, 2], c, max_length=8, max_prompt_length=5)
    assert p == [1, 2] and out[0]["response_ids"] == [1, 2, 3, 4]  # fits: untouched
    assert truncate(list(range(10)), c, max_length=8, max_prompt_length=None) is None


def test_policy_datamodule_shares_the_data_path(data_file, tmp_path):
    """Same argument names, report and cache as the PRM's: read report kept, tokenised once."""
    dm = datamodule(data_file, "pairs", cache_dir=str(tmp_path))
    assert dm.report.read == 6 * 4 + 6 + 6 * 4 + 6  # train and val read the same file, references added
    assert dm.report.kept == dm.report.read
    assert dm.state_dict()["read_report"]["read"] == dm.report.read
    again = datamodule(data_file, "pairs", cache_dir=str(tmp_path))
    assert again.datasets["train"]["response_ids"] == dm.datasets["train"]["response_ids"]
    assert len(list(tmp_path.glob("policy-*"))) == 1  # train and val: the same records, one cache entry
    with pytest.raises(Exception, match="missing_path"):
        PolicyDataModule(train=str(tmp_path / "nope.jsonl"), tokenizer="tiny", strict=True).setup("fit")


def test_pair_batches_put_chosen_rows_first(data_file):
    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    B = batch["first_error"].shape[0]
    assert batch["input_ids"].shape[0] == 2 * B and batch["num_completions"] == 2
    assert all(i.endswith("#ref") for i in batch["ids"][:B])
    assert (batch["first_error"] >= 0).all()
    assert batch["index"].tolist() == list(range(B))


# ------------------------------------------------------------------------------ objectives as components
def test_objectives_declare_view_reference_and_pairs():
    table = {name: (cls.view, cls.needs_reference, cls.paired) for name, cls in OBJECTIVES.items()}
    assert table == {
        "sft": ("filtered", False, False), "rft": ("filtered", False, False),
        "step_weighted_sft": ("all", False, False), "dpo": ("pairs", True, True), "ipo": ("pairs", True, True),
        "orpo": ("pairs", False, True), "step_dpo": ("step_pairs", True, True),
        "step_weighted_dpo": ("pairs", True, True), "kto": ("unpaired", True, False),
    }  # fmt: skip
    dpo = build_objective({"name": "dpo", "beta": 0.3, "nll_weight": 1.0})
    assert isinstance(dpo, DPO) and dpo.spec() == {"name": "dpo", "beta": 0.3, "label_smoothing": 0.0, "nll_weight": 1.0}
    assert build_objective(dpo.spec()).spec() == dpo.spec()
    assert build_objective("step_dpo").steps == 1  # Step-DPO prefers one step by default
    with pytest.raises(ValueError, match="unknown objective"):
        build_objective({"name": "os.system"})


def test_module_refuses_a_view_its_objective_does_not_take(data_file):
    import lightning as L

    module = PolicyModule.from_model(tiny_model("llama"), objective="kto")
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ValueError, match="unpaired"):
        trainer.fit(module, datamodule(data_file, "pairs"))


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
    lora = PolicyModule.from_model(_lora(tiny_model("llama", seed=0)), objective="dpo")
    assert lora.reference_mode == "adapter"
    frozen = PolicyModule.from_model(tiny_model("llama", seed=0), objective="dpo")
    assert frozen.reference_mode == "copy" and isinstance(frozen.reference_model, torch.nn.Module)
    assert not any(k.startswith("reference_model.") for k in frozen.state_dict())  # never checkpointed
    assert not any(p.requires_grad for p in frozen.reference_model.parameters())
    a, b = lora.reference_logps(batch), frozen.reference_logps(batch)
    mask = batch["loss_mask"]
    assert torch.allclose(a[mask], b[mask], atol=1e-5)
    assert not torch.allclose(logps(lora, batch)[mask], a[mask], atol=1e-3)  # adapters on differ


def test_precomputed_reference_equals_on_the_fly(data_file):
    from spare_train.policy.reference import ReferenceLogps

    dm = datamodule(data_file, "pairs")
    module = PolicyModule.from_model(_lora(tiny_model("llama", seed=0)), objective="dpo", reference="precomputed")
    cache = ReferenceLogps()
    trainer = types.SimpleNamespace(world_size=1, global_rank=0)  # one process: rank 0 scores everything
    cache.precompute(trainer, module, "val", dm.datasets["val"], dm.collator(), batch_size=3)
    assert sorted(cache.cache["val"]) == list(range(len(dm.datasets["val"])))
    batch = next(iter(dm.val_dataloader()))
    cache.on_validation_batch_start(None, module, batch, 0)
    with torch.no_grad():  # the reference is the policy as it was when precomputed, adapters included
        expect = logps(module, batch)
    mask = batch["loss_mask"]
    assert torch.allclose(batch["ref_logps"][mask], expect[mask], atol=1e-5)
    assert torch.equal(module.reference_logps(batch), batch["ref_logps"])


def test_precomputed_reference_needs_the_pre_pass(data_file):
    batch = next(iter(datamodule(data_file, "pairs").val_dataloader()))
    module = PolicyModule.from_model(tiny_model("llama"), objective="dpo", reference="precomputed")
    with pytest.raises(RuntimeError, match="pre-pass"):
        module.compute_loss(batch)
    with pytest.raises(ValueError, match="needs pairs"):
        PolicyModule.from_model(tiny_model("llama"), objective="dpo").compute_loss(
            next(iter(datamodule(data_file, "filtered").val_dataloader()))
        )


# ------------------------------------------------------------------------------ KTO
def test_mismatched_partners_always_pair_another_question():
    from spare_train.data.policy import mismatched_partners

    groups = ["a", "a", "a", "b", "b", "c"]
    partners = mismatched_partners(groups, seed=0)
    assert all(groups[j] != groups[i] for i, j in enumerate(partners))
    assert partners == mismatched_partners(groups, seed=0) != mismatched_partners(groups, seed=1)
    assert mismatched_partners(["a", "a"]) == [-1, -1]  # one question: no mismatched pair exists


def test_kto_reference_point_comes_from_mismatched_pairs(data_file):
    """z0 is the KL estimate on (prompt, completion of another question's example), not on the
    batch's own completions (the KTO paper's estimate; its authors' code and TRL pair within the
    batch, which here, with a batch of one question's candidates, would pair the same prompt)."""
    dm = datamodule(data_file, "unpaired")
    batch = next(iter(dm.val_dataloader()))
    B = batch["input_ids"].shape[0]
    assert batch["kl_input_ids"].shape[0] == B
    ds = dm.datasets["val"]
    assert len({ds[i]["group_id"] for i in range(B)}) == 1  # the batch holds one question's candidates
    responses = {tuple(r[0]): g for r, g in zip(ds["response_ids"], ds["group_id"])}
    for i in range(B):
        row = batch["kl_input_ids"][i][batch["kl_attention_mask"][i].bool()].tolist()
        prompt, other = ds[i]["prompt_ids"], ds[i]["kl_response_ids"]
        assert row == prompt + other and responses[tuple(other)] != ds[i]["group_id"]
        assert batch["kl_loss_mask"][i].sum() == len(other)
    policy = _lora(tiny_model("llama", seed=0))
    module = PolicyModule.from_model(policy, objective=KTO(beta=0.1))
    with torch.no_grad():
        mism = F_.sequence_logps(logps(module, {"input_ids": batch["kl_input_ids"],
                                                "attention_mask": batch["kl_attention_mask"]}), batch["kl_loss_mask"])
        with policy.disable_adapter():
            ref = F_.sequence_logps(logps(module, {"input_ids": batch["kl_input_ids"],
                                                   "attention_mask": batch["kl_attention_mask"]}), batch["kl_loss_mask"])
        own = F_.sequence_logps(logps(module, batch), batch["loss_mask"]) - F_.sequence_logps(
            module.reference_logps(batch), batch["loss_mask"])
    want = (mism - ref).mean().clamp(min=0)
    got = module.kl_reference_point(batch)
    assert torch.allclose(got, want, atol=1e-5)
    assert abs(float((mism - ref).mean() - own.mean())) > 1e-2  # the batch's own pairs give another estimate
    _, metrics = module.compute_loss(batch)
    assert torch.allclose(metrics["kto_z0"], want, atol=1e-5)
    # a precomputed reference serves the mismatched rows too (their partners are fixed per example)
    from spare_train.policy.reference import ReferenceLogps

    pre = PolicyModule.from_model(policy, objective=KTO(beta=0.1), reference="precomputed")
    cache = ReferenceLogps()
    with policy.disable_adapter():  # the reference is the policy as it is when precomputed
        cache.precompute(types.SimpleNamespace(world_size=1, global_rank=0), pre, "val", ds, dm.collator(), 4)
    cache.on_validation_batch_start(None, pre, batch, 0)
    assert torch.allclose(pre.kl_reference_point(batch), want, atol=1e-5)


# ------------------------------------------------------------------------------ objectives
def test_nll_weight_adds_the_chosen_answers_nll_to_dpo(data_file):
    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    plain = PolicyModule.from_model(tiny_model("llama", seed=0), objective="dpo", reference="copy")
    rpo = PolicyModule.from_model(tiny_model("llama", seed=0), objective=DPO(nll_weight=0.7), reference="copy")
    with torch.no_grad():
        base, _ = plain.compute_loss(batch)
        got, metrics = rpo.compute_loss(batch)
        B = batch["input_ids"].shape[0] // 2
        nll = F_.sft_loss(logps(rpo, batch)[:B], batch["loss_mask"][:B])
    assert nll > 0 and torch.allclose(metrics["nll"], nll)
    assert torch.allclose(got, base + 0.7 * nll, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_lowers_its_loss(data_file, name):
    torch.manual_seed(0)
    cls = OBJECTIVES[name]
    dm = datamodule(data_file, cls.view)
    batch = next(iter(dm.val_dataloader()))
    objective = cls(beta=0.5) if "beta" in cls.__init__.__code__.co_varnames else cls()
    module = PolicyModule.from_model(tiny_model("llama", seed=0), objective=objective)
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
    if name in ("dpo", "ipo", "step_dpo", "step_weighted_dpo"):
        assert metrics["rewards/margin"] > 0 and metrics["kl"].abs() > 0  # the policy moved off its reference


@pytest.mark.slow
def test_lightning_fit_with_precomputed_reference_and_lora(data_file, tmp_path):
    import lightning as L

    from spare_train.models.backbone import BackboneConfig, LoraSettings
    from spare_train.policy.reference import ReferenceLogps

    dm = datamodule(data_file, "pairs")
    cfg = BackboneConfig("tiny-llama", lora=LoraSettings(r=4, alpha=8))
    module = PolicyModule(cfg, objective="dpo", reference="precomputed", lr=1e-3)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, default_root_dir=tmp_path, limit_val_batches=1, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    cache = next(c for c in trainer.callbacks if isinstance(c, ReferenceLogps))
    assert len(cache.cache["train"]) == len(dm.datasets["train"]) and len(cache.cache["val"]) == len(dm.datasets["val"])
    metrics = trainer.logged_metrics
    assert torch.isfinite(metrics["train/loss"]) and 0.0 <= float(metrics["val/rewards/accuracy"]) <= 1.0
    assert trainer.global_step == 3
    # validating the trained policy keeps the original reference (it is not recomputed from the
    # trained policy, which would make every implicit reward 0)
    before = cache.cache["val"]
    again = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_val_batches=1)
    result = again.validate(module, dm, verbose=False)[0]
    assert cache.cache["val"] is before and result["val/rewards/margin"] != 0.0
    assert cache.state_dict()["cache"]["val"] is before  # and it travels with checkpoints


# ------------------------------------------------------------------------------ export
@pytest.mark.slow
def test_export_reloads_with_identical_logps_and_generates(data_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from spare_train.policy.export import export_policy

    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    module = PolicyModule.from_model(_lora(tiny_model("llama", seed=0)), objective="orpo", tokenizer="tiny")
    module.policy.eval()
    with torch.no_grad():
        before = logps(module, batch)
    export_policy(module, tmp_path / "policy", merge=True)
    with torch.no_grad():  # merging worked on a copy: the module is unchanged
        assert torch.equal(logps(module, batch), before)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").eval()
    with torch.no_grad():
        after = logps(module, batch, reloaded)
    mask = batch["loss_mask"]
    assert torch.allclose(before[mask], after[mask], atol=1e-4)
    prompt = torch.tensor([dm.datasets["val"][0]["prompt_ids"]])
    out = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=dm.tokenizer.pad_token_id)
    assert out.shape[1] > prompt.shape[1]


@pytest.mark.slow
def test_cli_export_of_a_trained_policy_checkpoint(data_file, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from transformers import AutoModelForCausalLM

    from spare_train.cli import main
    from spare_train.models.backbone import BackboneConfig, LoraSettings

    dm = datamodule(data_file, "pairs")
    module = PolicyModule(BackboneConfig("tiny-llama", lora=LoraSettings(r=4, alpha=8)), objective="orpo", lr=1e-2)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, callbacks=[ckpt_cb], enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, dm)
    assert trainer.global_step == 2 and ckpt_cb.last_model_path

    out = tmp_path / "policy"
    assert main(["export", ckpt_cb.last_model_path, str(out), "--merge"]) == 0
    assert not (out / "adapter_config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    batch = next(iter(dm.val_dataloader()))
    module.policy.eval()
    with torch.no_grad():
        before, after = logps(module, batch), logps(module, batch, reloaded)
        with module.policy.disable_adapter():  # the 2 steps moved the policy off its base
            base = logps(module, batch)
    mask = batch["loss_mask"]
    assert torch.allclose(before[mask], after[mask], atol=1e-4)
    assert not torch.allclose(before[mask], base[mask], atol=1e-4)
    prompt = torch.tensor([dm.datasets["val"][0]["prompt_ids"]])
    gen = reloaded.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=dm.tokenizer.pad_token_id)
    assert gen.shape[1] > prompt.shape[1]

    from peft import PeftModel

    from spare_train.assets import resolve_model_name
    from spare_train.models.hf import load_adapter

    assert main(["export", ckpt_cb.last_model_path, str(tmp_path / "adapter")]) == 0  # no --merge: a peft adapter
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-llama"  # portable, not this machine's cache folder
    adapter = load_adapter(tmp_path / "adapter", AutoModelForCausalLM, len(dm.tokenizer), {}).eval()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model_name("tiny-llama")),
                                      tmp_path / "adapter").eval()  # what docs/offline_rl.md tells peft users
    with torch.no_grad():
        assert torch.allclose(before[mask], logps(module, batch, plain)[mask], atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(before[mask], logps(module, batch, adapter)[mask], atol=1e-4)


@pytest.mark.slow
def test_policy_resume_is_exact_with_lora_dropout(data_file, tmp_path):
    """The shared checkpoint callback (trainable-only state, RNG states) makes offline-RL resume
    exact too: with LoRA dropout on, a run resumed from its first epoch ends where an
    uninterrupted run ends."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from spare_train.models.backbone import BackboneConfig, LoraSettings

    def fresh() -> PolicyModule:
        L.seed_everything(0)
        return PolicyModule(BackboneConfig("tiny-llama", lora=LoraSettings(r=4, alpha=8, dropout=0.1)),
                            objective="dpo", lr=1e-3, disable_dropout=False, warmup_ratio=0.25)  # fmt: skip

    def run(module, ckpt_path=None, callbacks=()):
        t = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_train_batches=2, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=list(callbacks),
                      enable_checkpointing=bool(callbacks))  # fmt: skip
        t.fit(module, datamodule(data_file, "pairs"), ckpt_path=ckpt_path)
        return t

    ck = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1)
    full = fresh()
    t1 = run(full, callbacks=[ck])
    ckpt = torch.load(tmp_path / "epoch=0.ckpt", weights_only=True)
    assert set(ckpt["state_dict"]) == {n for n, p in full.named_parameters() if p.requires_grad}
    assert ckpt["spare_train_module"] == "PolicyModule" and ckpt["hyper_parameters"]["objective"]["name"] == "dpo"
    resumed = fresh()
    t2 = run(resumed, ckpt_path=str(tmp_path / "epoch=0.ckpt"))
    assert t1.global_step == t2.global_step == 6
    want = {n: p for n, p in full.named_parameters() if p.requires_grad}
    for n, p in resumed.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, want[n]), n
def test_token_logps_with_a_loss_mask_skip_prompt_logits_and_match_the_full_forward(data_file):
    """``logits_to_keep`` from the first loss position: the same log-probs wherever a loss reads them."""
    dm = datamodule(data_file, "pairs")
    batch = next(iter(dm.val_dataloader()))
    module = PolicyModule.from_model(tiny_model("llama"), objective="dpo")
    mask = batch["loss_mask"]
    full = logps(module, batch)
    cut = module.token_logps(batch["input_ids"], batch["attention_mask"], loss_mask=mask)
    assert cut.shape == full.shape and int(mask.any(0).nonzero()[0]) > 1
    assert torch.allclose(cut[mask], full[mask], atol=1e-5)
    assert (cut[:, : int(mask.any(0).nonzero()[0]) - 1] == 0).all()
