"""What every checkpoint of the package holds beyond Lightning's defaults, in one callback.

* **Trainable tensors only** when the backbone has adapters: the frozen (maybe quantised) base
  weights come back from ``backbone.name_or_path``, so an 8B LoRA checkpoint is megabytes, not
  gigabytes. Modules opt in with ``save_trainable_only`` (and set ``strict_loading = False``).
* **RNG states of every rank**: Lightning saves none, and without them dropout (LoRA's included)
  draws other masks after a resume, so the resumed run drifts from an uninterrupted one. Each rank
  restores its own state; a run resumed on a different number of processes keeps its seeds.

Both modules return :class:`TrainingStateCheckpoint` from ``configure_callbacks``, so the Python
API and every recipe get it without listing it.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

RNG_KEY = "rng_states_per_rank"
#: which of the package's modules wrote a checkpoint (``spare-train export`` dispatches on it)
MODULE_KEY = "spare_train_module"


def rng_states() -> dict[str, torch.Tensor]:
    """This process's torch CPU (and CUDA, when present) generator states, as uint8 tensors."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def trainable_names(module: torch.nn.Module) -> set[str]:
    """Names of parameters that receive gradients (what an adapter checkpoint needs to keep)."""
    return {n for n, p in module.named_parameters() if p.requires_grad}


def _gather_rng(trainer: Any) -> list[dict[str, torch.Tensor]]:
    mine = rng_states()
    world = getattr(trainer, "world_size", 1)
    if world <= 1:
        return [mine]
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out


class TrainingStateCheckpoint(Callback):
    """Trainable-only state dicts under adapters, and every rank's RNG state (see module docstring)."""

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = _gather_rng(trainer)  # collective: every rank runs this hook
        checkpoint[MODULE_KEY] = type(pl_module).__name__
        if getattr(pl_module, "save_trainable_only", False):
            keep = trainable_names(pl_module)
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        # trainable-only checkpoints load non-strictly: still refuse tensors this model does not have
        unknown = set(checkpoint.get("state_dict", {})) - set(pl_module.state_dict())
        if unknown:
            raise KeyError(f"checkpoint tensors this model does not have: {sorted(unknown)[:5]}")
        states = checkpoint.get(RNG_KEY)
        if states:
            rank = getattr(trainer, "global_rank", 0)
            set_rng_states(states[rank] if rank < len(states) else states[0])
