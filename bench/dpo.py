"""DPO with LoRA: step time and peak memory, ours vs TRL's ``DPOTrainer`` on the same pairs.

Same model (the random Llama of bench/prm_train.py, Qwen3 vocabulary, fp32), LoRA r=16 / alpha 16
/ no dropout on every linear layer, beta 0.1, lr 5e-5 constant, the same batch of pairs and the same
pairs in the same order (both loaders sequential over one list of pairs):

* ``ours_adapter`` / ``ours_precomputed``: ``lightning.Trainer.fit`` of a ``PolicyModule``
  (objective ``DPO``; reference = the policy with adapters disabled, or reference log-probs
  precomputed at fit start) on a ``PolicyDataModule(view="pairs")`` of the GSM8K file (correct
  vs wrong solutions of one question).
* ``trl_adapter`` / ``trl_precomputed``: ``trl.DPOTrainer`` with ``peft_config`` (its reference is
  the adapter-disabled policy too) and ``precompute_ref_log_probs`` off / on; conversational
  rows (user question, assistant solution) built from the pairs ours trains on. fp32 (TRL
  defaults to bf16 autocast).

Step time is the median of the timed steps (after warm-up). ``to_first_step_s`` is the time from
``fit`` / ``train`` to the first step: the precomputed variants' pre-pass over the pairs shows as
its difference to the adapter variant. Memory: peak resident set of the timed steps.
"""

from __future__ import annotations

import time
from typing import Any

from common import child_main, reset_peak_rss, rss_mib, vm_hwm_mib

BETA, LR = 0.1, 5e-5


class Steps:
    """Wall time of each step, and the peak resident set from the first timed step on."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.tokens = warmup, [], []
        self.t = 0.0
        self.rss0, self.reset = 0.0, False
        self.t_call = self.to_first_step = 0.0

    def start(self, i: int) -> None:
        if i == 0:
            self.to_first_step = time.perf_counter() - self.t_call
        if i == self.warmup:
            self.rss0, self.reset = rss_mib(), reset_peak_rss()
        self.t = time.perf_counter()

    def end(self, i: int) -> None:
        if i >= self.warmup:
            self.times.append(time.perf_counter() - self.t)

    def result(self) -> dict[str, Any]:
        import statistics

        return {"step_ms": 1000 * statistics.median(self.times), "steps": len(self.times), "rss_timed": self.rss0,
                "peak_rss": vm_hwm_mib() if self.reset else float("nan"), "to_first_step_s": self.to_first_step,
                "tokens_per_step": statistics.mean(self.tokens[self.warmup :]) if self.tokens else float("nan")}  # fmt: skip


def pairs_data(cfg: dict[str, Any]) -> Any:
    """Our pairs dataset (first ``pairs`` pairs) and its data module."""
    from spare_train.data import PolicyDataModule

    dm = PolicyDataModule(train=cfg["data"], format="gsm8k_solutions", tokenizer=cfg["tokenizer"], view="pairs",
                          batch_size=cfg["batch"], max_length=cfg["max_length"], val_fraction=0.0)  # fmt: skip
    dm.setup("fit")
    dm.datasets["train"] = dm.datasets["train"].select(range(min(cfg["pairs"], len(dm.datasets["train"]))))
    return dm


def ours(cfg: dict[str, Any]) -> dict[str, Any]:
    import lightning as L
    from torch.utils.data import DataLoader

    from spare_train.models.backbone import BackboneConfig, LoraSettings
    from spare_train.policy import PolicyModule
    from spare_train.policy.objectives import DPO

    L.seed_everything(0, verbose=False)
    dm = pairs_data(cfg)
    ds = dm.datasets["train"]
    dm.train_dataloader = lambda: DataLoader(ds, batch_size=cfg["batch"], shuffle=False, collate_fn=dm.collator())
    reference = "precomputed" if cfg["variant"].endswith("precomputed") else "adapter"
    bb = BackboneConfig(name_or_path=cfg["model"], lora=LoraSettings(r=16, alpha=16, dropout=0.0))
    module = PolicyModule(backbone=bb, objective=DPO(beta=BETA), reference=reference, tokenizer=cfg["tokenizer"],
                          lr=LR, scheduler="constant")  # fmt: skip
    rec = Steps(cfg["warmup"])

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            rec.tokens.append(int(batch["attention_mask"].sum()))
            rec.start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec.end(batch_idx)

    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=cfg["warmup"] + cfg["steps"], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Timer()],
    )  # fmt: skip
    rec.t_call = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    return rec.result()


def trl(cfg: dict[str, Any]) -> dict[str, Any]:
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from spare_train.data.policy import response_text
    from spare_train.formats import read_records

    torch.manual_seed(0)
    records = {r.id: r for r in read_records("gsm8k_solutions", cfg["data"])[0]}
    rows = []
    for chosen, rejected in pairs_data(cfg).datasets["train"]["ids"]:
        c, r = records[chosen], records[rejected]
        rows.append({"prompt": [{"role": "user", "content": c.prompt.user_text()}],
                     "chosen": [{"role": "assistant", "content": response_text(c)[0]}],
                     "rejected": [{"role": "assistant", "content": response_text(r)[0]}]})  # fmt: skip
    tok = AutoTokenizer.from_pretrained(cfg["tokenizer"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"])
    rec = Steps(cfg["warmup"])
    precompute = cfg["variant"].endswith("precomputed")

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            rec.start(state.global_step)

        def on_step_end(self, args, state, control, **kw):
            rec.end(state.global_step - 1)

    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(
            output_dir=out, beta=BETA, per_device_train_batch_size=cfg["batch"], max_steps=cfg["warmup"] + cfg["steps"],
            learning_rate=LR, lr_scheduler_type="constant", max_length=cfg["max_length"], bf16=False, use_cpu=True,
            precompute_ref_log_probs=precompute, train_sampling_strategy="sequential", report_to=[],
            save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )  # fmt: skip
        peft_config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                             peft_config=peft_config, callbacks=[Timer()])  # fmt: skip
        collate = trainer.data_collator

        def counting(features: list[dict[str, Any]]) -> Any:
            batch = collate(features)
            mask = batch.get("attention_mask")
            rec.tokens.append(int(mask.sum()) if mask is not None else -1)
            return batch

        trainer.data_collator = counting
        rec.t_call = time.perf_counter()
        trainer.train()
    return rec.result()


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    v = cfg["variant"]
    return {"variant": v, **(ours(cfg) if v.startswith("ours") else trl(cfg))}


if __name__ == "__main__":
    child_main(measure)
