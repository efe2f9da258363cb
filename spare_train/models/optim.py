"""One optimiser and learning-rate schedule builder for every LightningModule of the package.

Parameter groups put weight decay on matrices only (never on biases, norms or other 1-d
tensors). ``adamw`` is torch's AdamW with the fused kernel where torch has one for the
parameters' device and dtype (CPU and CUDA floating point): the per-tensor loop torch otherwise
uses on CPU spent about ten times longer per step on a 151k-row embedding (see
docs/benchmarks.md). ``adamw_8bit`` / ``paged_adamw_8bit`` are bitsandbytes' 8-bit states,
imported only when chosen. Schedules are transformers' ``get_*_schedule_with_warmup``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

Optimizer = Literal["adamw", "adamw_8bit", "paged_adamw_8bit"]
Scheduler = Literal["cosine", "linear", "constant"]


@dataclass
class OptimConfig:
    """How trainable parameters are optimised.

    Args:
        optimizer: ``adamw`` (torch, fused kernel when available) or bitsandbytes ``adamw_8bit``
            / ``paged_adamw_8bit``.
        lr: peak learning rate.
        weight_decay: decoupled weight decay on matrices (not on biases, norms or 1-d tensors).
        betas: Adam betas.
        scheduler: learning-rate shape after warmup (transformers' ``get_*_schedule_with_warmup``).
        warmup_ratio: fraction of the total optimizer steps spent warming up linearly from 0.
    """

    optimizer: Optimizer = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: Scheduler = "cosine"
    warmup_ratio: float = 0.0


def param_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two groups: matrices with ``weight_decay``, the rest without."""
    named = [(n, p) for n, p in named if p.requires_grad]
    groups = [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def _fused_ok(groups: list[dict[str, Any]]) -> bool:
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        for p in params
    )


def build_optimizer(named: list[tuple[str, torch.nn.Parameter]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` over the trainable ones of ``named`` parameters."""
    groups = param_groups(named, cfg.weight_decay)
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": tuple(cfg.betas)}
    if cfg.optimizer == "adamw":
        if _fused_ok(groups):
            kwargs["fused"] = True
        return torch.optim.AdamW(groups, **kwargs)
    if cfg.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        cls = {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[cfg.optimizer]
        return cls(groups, **kwargs)
    raise ValueError(f"optimizer must be adamw, adamw_8bit or paged_adamw_8bit, not {cfg.optimizer!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> Any:
    """transformers' schedule of ``cfg.scheduler`` with ``cfg.warmup_ratio`` of ``total_steps`` warmup."""
    import transformers

    total = max(1, int(total_steps))
    warmup = int(cfg.warmup_ratio * total)
    if cfg.scheduler == "cosine":
        return transformers.get_cosine_schedule_with_warmup(optimizer, warmup, total)
    if cfg.scheduler == "linear":
        return transformers.get_linear_schedule_with_warmup(optimizer, warmup, total)
    if cfg.scheduler == "constant":
        return transformers.get_constant_schedule_with_warmup(optimizer, warmup)
    raise ValueError(f"scheduler must be cosine, linear or constant, not {cfg.scheduler!r}")


def configure_optimizers(module: Any, cfg: OptimConfig) -> dict[str, Any]:
    """What ``LightningModule.configure_optimizers`` returns: the optimiser and a per-step schedule."""
    opt = build_optimizer(list(module.named_parameters()), cfg)
    total = module.trainer.estimated_stepping_batches if module._trainer is not None else 1
    sched = build_scheduler(opt, cfg, total if total != float("inf") else 1)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
