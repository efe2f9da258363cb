"""PRM training: real tokens/s, padding efficiency and memory, ours vs TRL vs a bare loop.

Every variant trains the same random Llama (tied embeddings, the Qwen3 vocabulary plus the step
tag, full fine-tuning, fp32) on the same GSM8K records (labels: the outcome on the last step;
TRL: ``train_on_last_step_only``) with AdamW at the same learning rate, batch and step count:

* ``ours_a`` / ``ours_a_packed`` / ``ours_b`` / ``ours_b_packed``: ``lightning.Trainer.fit`` of a
  ``PRMModule`` (head ``lm_tokens`` or ``classifier``) on a ``PRMDataModule`` (length-grouped
  batches; ``pack=True`` packs each batch into rows of ``max_length``).
* ``bare``: a plain PyTorch loop (forward, loss, backward, step, zero_grad) over the same
  module, the same ``PRMDataModule`` batches and the optimiser ``PRMModule`` builds -- the limit
  for our Lightning loop.
* ``full_logits``: the bare loop, but scoring through the causal LM's ``[B, L, V]`` logits (what a
  PRM written as "LM logits of the label tokens" does): the memory reference for head A.
* ``trl``: ``trl.experimental.prm.PRMTrainer`` with ``AutoModelForTokenClassification`` of the
  same weights, its own ``tokenize_row`` and collator, defaults otherwise (its optimiser is
  transformers' default, fused AdamW on torch >= 2.8) except fp32 (TRL defaults to bf16 autocast).

Throughput counts real (non-padding) tokens of the timed steps over their wall time (data
loading included for all). Padding efficiency is real / computed tokens (rows x padded length)
of the same steps. Memory: the peak resident set of the timed steps (the mark is reset when they
start; the warm-up steps have allocated the optimiser state) and, for the bare loops, what a step
adds above the resident set at its start (``step_memory``: gradients, activations, logits). The
resident set is read after every step (``rss_steps``).
"""

from __future__ import annotations

import time
from typing import Any

from common import child_main, peak_rss_mib, reset_peak_rss, rss_mib, vm_hwm_mib

LR = 1e-4


class Recorder:
    """Per-step readings shared by every loop: real and computed tokens, RSS, wall time.

    The clock starts and the peak resident set is reset at the first timed step (after the
    warm-up steps allocated the optimiser state), so ``peak_rss`` is the peak of the timed steps
    and ``step_memory`` what they add above the resident set at their start.
    """

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.real = self.computed = 0
        self.rss: list[float] = []
        self.losses: list[float] = []
        self.t0 = self.t1 = 0.0
        self.rss_train = self.rss_timed = 0.0
        self.peak_reset = False

    def start_training(self) -> None:
        self.rss_train = rss_mib()

    def batch_start(self, i: int, attention_mask: Any, input_ids: Any) -> None:
        if i == self.warmup:
            self.rss_timed, self.peak_reset = rss_mib(), reset_peak_rss()
            self.t0 = time.perf_counter()
        if i >= self.warmup:
            self.real += int(attention_mask.sum())
            self.computed += int(input_ids.numel())

    def batch_end(self, i: int, loss: float) -> None:
        self.losses.append(loss)
        self.rss.append(rss_mib())
        if i == self.warmup + self.steps - 1:
            self.t1 = time.perf_counter()

    def result(self) -> dict[str, Any]:
        peak = vm_hwm_mib() if self.peak_reset else peak_rss_mib()
        seconds = self.t1 - self.t0
        return {"seconds": seconds, "tokens": self.real, "computed": self.computed,
                "tokens_per_s": self.real / seconds, "padding_efficiency": self.real / self.computed,
                "step_ms": 1000 * seconds / self.steps, "rss_train": self.rss_train, "peak_rss": peak,
                "step_memory": peak - self.rss_timed, "rss_steps": self.rss, "losses": self.losses}  # fmt: skip


def build(cfg: dict[str, Any], head: str, pack: bool) -> tuple[Any, Any]:
    import lightning as L

    from spare_train.data import PRMDataModule
    from spare_train.models.backbone import BackboneConfig
    from spare_train.prm import PRMModule

    L.seed_everything(0, verbose=False)
    dm = PRMDataModule(train=cfg["data"], format="gsm8k_solutions", label_policy="outcome_only",
                       tokenizer=cfg["tokenizer"], batch_size=cfg["batch"], max_length=cfg["max_length"],
                       val_fraction=0.0, pack=pack)  # fmt: skip
    module = PRMModule(backbone=BackboneConfig(name_or_path=cfg["model"]), head=head, tokenizer=cfg["tokenizer"],
                       prompt_format=dm.format_config, lr=LR, scheduler="constant",
                       optimizer=cfg.get("optimizer", "adamw"))  # fmt: skip
    return module, dm


def ours(cfg: dict[str, Any]) -> dict[str, Any]:
    import lightning as L

    head = "classifier" if cfg["variant"].startswith("ours_b") else "lm_tokens"
    module, dm = build(cfg, head, pack=cfg["variant"].endswith("packed"))
    rec = Recorder(cfg["warmup"], cfg["steps"])

    class Timer(L.Callback):
        def on_train_start(self, trainer, pl_module):
            rec.start_training()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rec.batch_start(batch_idx, batch["attention_mask"], batch["input_ids"])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec.batch_end(batch_idx, float(outputs["loss"]))

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=cfg["warmup"] + cfg["steps"], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Timer()],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    opt = trainer.optimizers[0]
    return {**rec.result(), "optimizer": f"{type(opt).__name__} fused={opt.defaults.get('fused')}"}


def bare(cfg: dict[str, Any]) -> dict[str, Any]:
    from spare_train.models.optim import build_optimizer
    from spare_train.prm.heads import gather_steps

    module, dm = build(cfg, "lm_tokens", pack=False)
    dm.setup("fit")
    module.configure_model()
    module.train()
    opt = build_optimizer(list(module.named_parameters()), module.optim)
    full = cfg["variant"] == "full_logits"
    neg_pos = [module.head.neg_id, module.head.pos_id] if full else None

    def logits(batch: dict[str, Any]) -> Any:
        if not full:
            return module(batch)  # head A: hidden states at the tags -> two output-embedding rows
        out = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return gather_steps(out.logits, batch["label_positions"])[..., neg_pos]  # [B, L, V] logits first

    rec = Recorder(cfg["warmup"], cfg["steps"])
    rec.start_training()
    for i, batch in enumerate(dm.train_dataloader()):
        if i == cfg["warmup"] + cfg["steps"]:
            break
        rec.batch_start(i, batch["attention_mask"], batch["input_ids"])
        loss = module.loss(logits(batch), batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        rec.batch_end(i, float(loss))
    return {**rec.result(), "optimizer": f"{type(opt).__name__} fused={opt.defaults.get('fused')}"}


def trl_rows(path: str) -> list[dict[str, Any]]:
    """The TRL dataset of the GSM8K file: as in bench/prep.py (``trl`` variant)."""
    import json

    from common import CANDIDATE_KEYS

    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            sols = [(row[k]["solution"], bool(row[k]["is_correct"])) for k in CANDIDATE_KEYS]
            for text, correct in [*sols, (row["ground_truth"], True)]:
                steps = [s.strip() for s in text.splitlines() if s.strip()]
                rows.append({"question": row["question"].strip(), "completions": steps, "labels": [correct] * len(steps)})
    return rows


def trl(cfg: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoModelForTokenClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.prm import PRMConfig, PRMTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(cfg["tokenizer"])
    rows = trl_rows(cfg["data"])
    prompts = {q: tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in {r["question"] for r in rows}}  # fmt: skip
    ds = Dataset.from_list([{"prompt": prompts[r.pop("question")], **r} for r in rows])
    model = AutoModelForTokenClassification.from_pretrained(cfg["model"], num_labels=2)
    rec = Recorder(cfg["warmup"], cfg["steps"])
    batches: list[tuple[Any, Any]] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            rec.start_training()

        def on_step_begin(self, args, state, control, **kw):
            mask, ids = batches[state.global_step]
            rec.batch_start(state.global_step, mask, ids)

        def on_step_end(self, args, state, control, **kw):
            rec.batch_end(state.global_step - 1, float("nan"))

    with tempfile.TemporaryDirectory() as out:
        args = PRMConfig(
            output_dir=out, per_device_train_batch_size=cfg["batch"], max_steps=cfg["warmup"] + cfg["steps"],
            learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0, max_length=cfg["max_length"],
            train_on_last_step_only=True, save_strategy="no", report_to=[], use_cpu=True, logging_steps=10**6,
            dataloader_num_workers=0, disable_tqdm=True, seed=0, bf16=False,  # TRL defaults to bf16: fp32 as ours
        )  # fmt: skip
        trainer = PRMTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[Timer()])
        collate = trainer.data_collator

        def counting(features: list[dict[str, Any]]) -> Any:
            batch = collate(features)
            batches.append((batch["attention_mask"], batch["input_ids"]))
            return batch

        trainer.data_collator = counting
        trainer.train()
    opt = trainer.optimizer
    opt = getattr(opt, "optimizer", opt)  # accelerate's wrapper
    return {**rec.result(), "optimizer": f"{type(opt).__name__} fused={opt.defaults.get('fused')}"}


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    v = cfg["variant"]
    fn = ours if v.startswith("ours") else trl if v == "trl" else bare
    return {"variant": v, **fn(cfg)}


if __name__ == "__main__":
    child_main(measure)
