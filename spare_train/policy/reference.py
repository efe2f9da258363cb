"""The reference-log-prob pre-pass (``reference: precomputed``) as a callback that owns its cache.

At the start of ``fit`` the reference model (the policy as it is then, adapters included) runs
once over every example of the train and validation datasets; each rank scores its share
(examples ``rank, rank + world, …``, in the same number of forward passes on every rank, as FSDP
needs) and the shares are gathered, so under DDP or FSDP the pass costs ``1 / world`` of the data
per rank. Each example's token log-probs per completion are kept here,
keyed by the example's ``index`` column; before every batch the callback writes them into the
batch as ``ref_logps`` (``[R, L]``, aligned with ``loss_mask``). Training then holds one model and
does one forward pass per step. Nothing is written into the DataModule.

The cache is computed once, from the policy as it is when first needed, and travels with the
checkpoint (``state_dict``): a resumed run, or a ``validate`` after ``fit``, keeps the original
reference instead of silently taking the trained policy as its own reference.
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
        # every rank runs the same number of forwards: under FSDP each one gathers weights from all
        # ranks, so a rank with one batch fewer would leave the others waiting
        largest_share = -(-len(dataset) // world)
        n_batches = -(-largest_share // batch_size)
        local: dict[int, list[torch.Tensor]] = {}
        was_training = module.policy.training
        module.policy.eval()
        for b in range(n_batches):
            chunk = mine[b * batch_size : (b + 1) * batch_size]
            batch = collate([dataset[i] for i in (chunk or [0])])  # an empty share runs a discarded batch
            batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logps = module.reference_forward(batch).float().cpu()
            kl = module.reference_forward(batch, prefix="kl_").float().cpu() if "kl_input_ids" in batch else None
            if not chunk:
                continue
            mask = batch["loss_mask"].cpu()
            B = len(batch["index"])
            for r in range(len(logps)):
                local.setdefault(int(batch["index"][r % B]), []).append(logps[r][mask[r]])
            if kl is not None:  # KTO's mismatched rows are fixed per example: cache them too
                kl_mask = batch["kl_loss_mask"].cpu()
                for r in range(B):
                    local[int(batch["index"][r])].append(kl[r][kl_mask[r]])
        module.policy.train(was_training)
        if world > 1:
            import torch.distributed as dist

            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, local)
            local = {k: v for part in parts for k, v in part.items()}
        self.cache[split] = local

    def _ensure(self, trainer: Any, pl_module: Any, splits: tuple[str, ...]) -> None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "datasets"):
            raise ValueError("reference='precomputed' needs a DataModule with tokenised datasets")
        dm.setup("fit")
        for split in splits:
            if split in dm.datasets and split not in self.cache:
                self.precompute(trainer, pl_module, split, dm.datasets[split], dm.collator(), dm.hparams.batch_size)

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._ensure(trainer, pl_module, ("train", "val"))

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._ensure(trainer, pl_module, ("val",))

    def state_dict(self) -> dict[str, Any]:
        return {"cache": self.cache}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.cache = state_dict.get("cache", {})

    def _fill(self, split: str, batch: dict[str, Any]) -> None:
        cache = self.cache.get(split)
        if cache is None or "ref_logps" in batch:
            return
        B = len(batch["index"])
        for key, mask, offset in (("ref_logps", batch["loss_mask"], 0), ("kl_ref_logps", batch.get("kl_loss_mask"), None)):
            if mask is None:
                continue
            out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            for r in range(mask.shape[0]):
                entries = cache[int(batch["index"][r % B])]
                values = entries[r // B] if offset is not None else entries[-1]
                out[r, mask[r]] = values.to(mask.device)
            batch[key] = out

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._fill("train", batch)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._fill("val", batch)
