"""The reference-log-prob pre-pass (``reference: precomputed``) as a callback that owns its cache.

At the start of ``fit`` the reference model (the policy as it is then, adapters included) runs
once over every example of the train and validation datasets; each rank scores its share
(examples ``rank, rank + world, …``) and the shares are gathered, so under DDP the pass costs
``1 / world`` of the data per rank. Each example's token log-probs per completion are kept here,
keyed by the example's ``index`` column; before every batch the callback writes them into the
batch as ``ref_logps`` (``[R, L]``, aligned with ``loss_mask``). Training then holds one model and
does one forward pass per step. Nothing is written into the DataModule.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback


class ReferenceLogps(Callback):
    """Precompute and serve reference token log-probs (see module docstring)."""

    def __init__(self) -> None:
        self.cache: dict[str, dict[int, list[torch.Tensor]]] = {}

    @torch.no_grad()
    def precompute(self, trainer: Any, module: Any, split: str, dataset: Any, collate: Any, batch_size: int) -> None:
        world, rank = trainer.world_size, trainer.global_rank
        mine = list(range(rank, len(dataset), world))
        local: dict[int, list[torch.Tensor]] = {}
        was_training = module.policy.training
        module.policy.eval()
        for start in range(0, len(mine), batch_size):
            batch = collate([dataset[i] for i in mine[start : start + batch_size]])
            batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logps = module.reference_forward(batch).float().cpu()
            mask = batch["loss_mask"].cpu()
            B = len(batch["index"])
            for r in range(len(logps)):
                local.setdefault(int(batch["index"][r % B]), []).append(logps[r][mask[r]])
        module.policy.train(was_training)
        if world > 1:
            import torch.distributed as dist

            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, local)
            local = {k: v for part in parts for k, v in part.items()}
        self.cache[split] = local

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "datasets"):
            raise ValueError("reference='precomputed' needs a DataModule with tokenised datasets")
        dm.setup("fit")
        for split in ("train", "val"):
            if split in dm.datasets and split not in self.cache:
                self.precompute(trainer, pl_module, split, dm.datasets[split], dm.collator(), dm.hparams.batch_size)

    def _fill(self, split: str, batch: dict[str, Any]) -> None:
        cache = self.cache.get(split)
        if cache is None or "ref_logps" in batch:
            return
        mask = batch["loss_mask"]
        out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
        B = len(batch["index"])
        for r in range(mask.shape[0]):
            values = cache[int(batch["index"][r % B])][r // B]
            out[r, mask[r]] = values.to(mask.device)
        batch["ref_logps"] = out

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._fill("train", batch)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._fill("val", batch)
