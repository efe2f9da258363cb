"""What every checkpoint of the package holds beyond Lightning's defaults, and how it is written.

* **Trainable tensors only** when the backbone has adapters: the frozen (maybe quantised) base
  weights come back from ``backbone.name_or_path``, so an 8B LoRA checkpoint is megabytes, not
  gigabytes. Modules opt in with ``save_trainable_only`` (and set ``strict_loading = False``).
* **RNG states of every rank**: Lightning saves none, and without them dropout (LoRA's included)
  draws other masks after a resume, so the resumed run drifts from an uninterrupted one. Each rank
  restores its own state when the checkpoint loads; a run resumed on a different number of
  processes keeps its seeds. Nothing between the load and the next batch may draw from the global
  generator: the package's DataLoaders seed their workers from their own generator, for that.
* **The sampler position** is the DataModule's (see :class:`spare_train.data.base.AnnotationDataModule`):
  a mid-epoch resume continues with the next batch of the same epoch order.
* **Written atomically**: :class:`AtomicCheckpointIO` writes ``NAME.ckpt`` to a temporary file in
  the same folder, fsyncs it and renames it over the old one, so a crash (``kill -9``, node loss)
  while saving leaves the previous checkpoint whole. Lightning's own writer stages the file in the
  system temp folder and *copies* it when that is another file system (cluster nodes with a local
  ``/tmp``), which is not atomic. :class:`TrainingStateCheckpoint` installs it on the strategy.

Both modules return :class:`TrainingStateCheckpoint` from ``configure_callbacks``, so the Python
API and every recipe get it without listing it. :func:`find_last_checkpoint` is what
``spare-train fit --ckpt_path last`` resumes from: the newest complete checkpoint of the run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``torch.save`` checkpoints, written to ``.NAME.PID.tmp`` next to ``NAME`` and
    renamed over it (see the module docstring). Remote paths (``s3://``…) keep Lightning's writer.
    Read always with ``weights_only=True``, whatever a caller passes: a checkpoint is data, and a
    crafted ``--ckpt_path`` file must not run code."""

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-save
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)  # the rename itself survives a power loss
        finally:
            os.close(fd)


def find_last_checkpoint(root: str | Path) -> str | None:
    """The newest complete checkpoint (``*.ckpt`` file or sharded folder) anywhere under ``root``.

    What ``--ckpt_path last`` resumes from: Lightning looks only for ``last.ckpt`` in the current
    run's checkpoint folder, and a new process logs to a new ``version_N`` folder, so it would find
    nothing and silently start over; and a periodic checkpoint (every N steps) may be newer than
    ``last.ckpt``. A file counts when it is a whole zip archive (``torch.save``'s format), a folder
    once its ``meta.pt`` exists (written last); one a crash left between the renames of a swap is
    put back first. Temporary names (``.NAME…``) never count.
    """
    import zipfile

    from spare_train.models.parallel import META, recover_swap

    root = Path(root)
    if not root.is_dir():
        return None
    for old in root.rglob(".*.ckpt.old"):
        recover_swap(old.with_name(old.name[1 : -len(".old")]))
    found = [p for p in root.rglob("*.ckpt") if not p.name.startswith(".")
             and ((p.is_file() and zipfile.is_zipfile(p)) or (p / META).is_file())]  # fmt: skip
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


class TrainingStateCheckpoint(Callback):
    """Trainable-only state dicts under adapters, every rank's RNG state, atomic writes (see the
    module docstring)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # not a user's own CheckpointIO
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[RNG_KEY] = _gather_rng(trainer)  # collective: every rank runs this hook
        checkpoint[MODULE_KEY] = type(pl_module).__name__
        if getattr(pl_module, "save_trainable_only", False) and "state_dict" in checkpoint:
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
