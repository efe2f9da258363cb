"""Where a PRM training step goes, per optimiser option: forward+backward vs the optimiser step.

``lightning.Trainer.fit`` of a ``PRMModule`` (head A, full fine-tuning of the random Llama with
the Qwen3 vocabulary: a 19M-parameter tied embedding dominates the parameters) with each
``optimizer`` option, timed by Lightning's hooks: forward+backward from ``on_train_batch_start``
to ``on_before_optimizer_step``, the optimiser step from there to ``on_train_batch_end``.

* ``adamw``: torch AdamW as ``spare_train.models.optim`` builds it (``fused=True`` on CPU/CUDA).
* ``adamw_unfused``: the same with the fused kernel switched off -- what the builder did before
  (torch's default on CPU is the per-tensor loop): the cause the issue named.
* ``adamw_8bit`` / ``paged_adamw_8bit``: bitsandbytes' optimisers, as chosen in a recipe.
* ``ddp_adamw`` / ``ddp_adamw_unfused``: the first two under 2-process DDP (gloo, one thread a
  process); every rank reports, with a checksum of its parameters after training (equal on both
  ranks: the fused update keeps replicas in step).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from common import child_main


def measure(cfg: dict[str, Any]) -> dict[str, Any] | None:
    import lightning as L
    import torch

    import spare_train.models.optim as optim
    from spare_train.data import PRMDataModule
    from spare_train.models.backbone import BackboneConfig
    from spare_train.prm import PRMModule

    v = cfg["variant"]
    if v.endswith("unfused"):
        optim._fused_ok = lambda groups: False  # the builder as it was before the fused kernel
    name = v.removeprefix("ddp_").removesuffix("_unfused")
    L.seed_everything(0, verbose=False)
    dm = PRMDataModule(train=cfg["data"], format="gsm8k_solutions", label_policy="outcome_only",
                       tokenizer=cfg["tokenizer"], batch_size=cfg["batch"], max_length=cfg["max_length"],
                       val_fraction=0.0)  # fmt: skip
    module = PRMModule(backbone=BackboneConfig(name_or_path=cfg["model"]), tokenizer=cfg["tokenizer"],
                       prompt_format=dm.format_config, lr=1e-4, scheduler="constant", optimizer=name)  # fmt: skip
    times: dict[str, list[float]] = {"fwd_bwd": [], "optimizer": [], "step": []}
    marks: dict[str, float] = {}

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            marks["start"] = time.perf_counter()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            marks["opt"] = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            end = time.perf_counter()
            if batch_idx >= cfg["warmup"]:
                times["fwd_bwd"].append(marks["opt"] - marks["start"])
                times["optimizer"].append(end - marks["opt"])
                times["step"].append(end - marks["start"])

    ddp = v.startswith("ddp")
    trainer = L.Trainer(
        accelerator="cpu", devices=2 if ddp else 1, strategy="ddp" if ddp else "auto",
        max_steps=cfg["warmup"] + cfg["steps"], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=[Timer()],
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    opt = trainer.optimizers[0]
    checksum = float(sum(p.detach().double().sum() for p in module.parameters()))
    return {"variant": v, "rank": trainer.global_rank, "world": trainer.world_size, "threads": torch.get_num_threads(),
            "optimizer": f"{type(opt).__name__} fused={opt.defaults.get('fused')}", "checksum": checksum,
            **{f"{k}_ms": 1000 * statistics.median(x) for k, x in times.items()}}  # fmt: skip


if __name__ == "__main__":
    child_main(measure)
