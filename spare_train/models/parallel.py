"""FSDP2 for both training modules: ``fully_shard`` per decoder layer under Lightning's
``ModelParallelStrategy``, and checkpoints that hold what the module says they hold.

Lightning's ``ModelParallelStrategy`` gives a LightningModule a device mesh and calls its
``configure_model``; what to shard is the module's business. Both modules call
:func:`shard_for_strategy` there, which does nothing unless a mesh is present, so DDP, one device
and FSDP1 (Lightning's ``FSDPStrategy``, which wraps the module itself) take the same path.

:class:`FSDP2Strategy` is ``ModelParallelStrategy`` fixed to data-parallel sharding over every
process (Lightning's ``"auto"`` would make a node tensor-parallel), carrying the sharding settings
(:class:`Sharding`) and saving checkpoints the way :mod:`spare_train.models.checkpoint` promises:

* only the tensors the module saves (trainable ones under adapters; never the frozen reference
  copy), gathered per tensor, so a LoRA checkpoint of an 8B model never gathers the 8B base;
* ``save_distributed_checkpoint: true`` (default): a folder of per-rank shards
  (``torch.distributed.checkpoint``) plus ``meta.pt`` (loops, callbacks, RNG), resumable on the
  same or another number of processes; ``false``: one consolidated ``.ckpt`` file like DDP's;
* written atomically: a folder is written under a temporary name and swapped in, so a crash
  mid-save leaves the previous checkpoint whole (:func:`swap_into_place`).
"""

from __future__ import annotations

import pickle
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import Tensor, nn

from spare_train.models.backbone import DTYPES, unwrap
from spare_train.models.checkpoint import trainable_names

Dtype = Literal["float32", "bfloat16", "float16"]
#: the file next to the shards that holds everything but weights and optimizer state (Lightning's name)
META = "meta.pt"


@dataclass
class Sharding:
    """How ``fully_shard`` wraps a model (what :class:`FSDP2Strategy` passes to the modules).

    Args:
        param_dtype: dtype parameters are gathered and computed in (``None``: as stored). With
            ``bfloat16`` and trainer ``precision: 32-true``, fp32 master weights and optimizer
            state stay sharded while matmuls run in bf16.
        reduce_dtype: dtype of the gradient reduce-scatter (``float32`` keeps bf16 training stable).
        activation_checkpointing: recompute each decoder layer in the backward pass (transformers'
            non-reentrant gradient checkpointing, which keeps parameter names unchanged).
        reshard_after_forward: free each layer's gathered weights after its forward (ZeRO-3);
            ``False`` keeps them until the backward (ZeRO-2: more memory, less communication).
        cpu_offload: keep sharded parameters, gradients and optimizer state in CPU memory.
    """

    param_dtype: Dtype | None = None
    reduce_dtype: Dtype | None = None
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    cpu_offload: bool = False

    def fsdp_kwargs(self, mesh: Any) -> dict[str, Any]:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy

        mp = MixedPrecisionPolicy(
            param_dtype=DTYPES[self.param_dtype] if self.param_dtype else None,
            reduce_dtype=DTYPES[self.reduce_dtype] if self.reduce_dtype else None,
        )
        return {"mesh": mesh, "mp_policy": mp, "offload_policy": CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks of a (peft-wrapped) causal LM or headless body."""
    base = unwrap(model)
    body = base.get_decoder() if hasattr(base, "get_decoder") else base
    layers = getattr(body, "layers", None) or getattr(base, "layers", None)
    if layers is None:
        raise ValueError(f"cannot find the decoder layers of {type(base).__name__} (no .layers)")
    return list(layers)


def _owners(group: nn.Module, params: set[int]) -> list[nn.Module]:
    """The submodules of ``group`` whose ``forward`` uses any of ``params`` (by id): their direct
    owners, or the parent of a ``ParameterDict``/``ParameterList`` (which is never called itself)."""
    owners: list[nn.Module] = []
    for parent in group.modules():
        for child in [parent, *parent.children()]:
            if any(id(p) in params for p in child.parameters(recurse=False)):
                owner = parent if isinstance(child, (nn.ParameterDict, nn.ParameterList)) else child
                if all(owner is not o for o in owners):
                    owners.append(owner)
    return owners


def shard_group(group: nn.Module, kwargs: dict[str, Any], reshard_after_forward: bool = True) -> None:
    """``fully_shard(group)``; trainable parameters of a minority dtype get their own groups first.

    FSDP2 reduces a group's gradients in one buffer, so a group's *trainable* parameters must share
    a dtype (frozen ones need not). peft keeps LoRA weights in float32 over a bf16 base, trainable
    new-token rows in the embedding dtype, and a classifier head is float32: those owners are
    sharded on their own before the group, and frozen (even NF4) weights shard with the layer.
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor

    by_dtype: dict[torch.dtype, set[int]] = {}
    for p in group.parameters():
        if p.requires_grad and not isinstance(p, DTensor):  # DTensors: already in a child's group
            by_dtype.setdefault(p.dtype, set()).add(id(p))
    if len(by_dtype) > 1:
        majority = max(by_dtype, key=lambda d: len(by_dtype[d]))
        for dtype, ids in by_dtype.items():
            if dtype != majority:
                for owner in _owners(group, ids):
                    if owner is not group and not isinstance(owner, FSDPModule):
                        fully_shard(owner, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(group, reshard_after_forward=reshard_after_forward, **kwargs)


def shard_model(model: nn.Module, mesh: Any, sharding: Sharding, root: nn.Module | None = None) -> None:
    """Shard ``model`` with FSDP2: each decoder layer, then ``root``.

    ``root`` (default ``model``) is the module whose ``forward`` the training step calls: its group
    holds what is left (embeddings, final norm, LM head, a classifier head) and its hooks gather
    them for the whole forward, so code that reads e.g. output-embedding rows inside that forward
    sees full tensors, never shards.
    """
    if sharding.activation_checkpointing:
        unwrap(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kwargs = sharding.fsdp_kwargs(mesh)
    for layer in decoder_layers(model):
        shard_group(layer, kwargs, sharding.reshard_after_forward)
    shard_group(root if root is not None else model, kwargs, reshard_after_forward=False)


def shard_for_strategy(module: Any, model: nn.Module | None, root: nn.Module | None = None) -> bool:
    """Shard ``model`` (under ``root``) when the trainer's strategy gave ``module`` a device mesh
    (FSDP2); else, or when already sharded, do nothing. Returns whether it sharded.

    Tensor parallelism is not supported: the mesh's tensor-parallel dimension must be 1 (which
    :class:`FSDP2Strategy` guarantees).
    """
    from torch.distributed.fsdp import FSDPModule

    mesh = getattr(module, "_device_mesh", None)
    if mesh is None or model is None or isinstance(root if root is not None else model, FSDPModule):
        return False
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError("tensor parallelism is not supported: use spare_train.models.parallel.FSDP2Strategy "
                         "(data-parallel sharding over every process)")  # fmt: skip
    dp_mesh = mesh["data_parallel"] if "data_parallel" in names else mesh
    strategy = module.trainer.strategy if module._trainer is not None else None
    shard_model(model, dp_mesh, getattr(strategy, "sharding", Sharding()), root=root)
    return True


# ------------------------------------------------------------------------------ checkpoints
def checkpoint_tensors(module: nn.Module) -> dict[str, Tensor]:
    """What a checkpoint of ``module`` holds: its ``state_dict`` (which leaves out a frozen
    reference copy), cut to trainable tensors when ``module.save_trainable_only``. Values share
    storage with the parameters (sharded DTensors under FSDP2), so loading into them is in place."""
    state = module.state_dict()
    if getattr(module, "save_trainable_only", False):
        keep = trainable_names(module)
        state = {k: v for k, v in state.items() if k in keep}
    return state


def full_tensors(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each tensor gathered whole onto the CPU (a collective per DTensor: every rank calls this)."""
    from torch.distributed.tensor import DTensor

    return {k: (v.full_tensor() if isinstance(v, DTensor) else v).detach().cpu() for k, v in state.items()}


def load_full_tensors(targets: dict[str, Tensor], state: dict[str, Tensor]) -> None:
    """Copy whole tensors ``state`` into ``targets`` (each rank keeps its own shard of a DTensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    missing = sorted(set(targets) - set(state))
    if missing:
        raise KeyError(f"the checkpoint lacks tensors this model saves: {missing[:5]}")
    with torch.no_grad():
        for name, target in targets.items():
            value = state[name]
            if isinstance(target, DTensor):
                value = distribute_tensor(value.to(target.device, target.dtype), target.device_mesh, target.placements,
                                          src_data_rank=None).to_local()  # fmt: skip
                target = target.to_local()
            target.copy_(value)


def swap_into_place(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the complete folder ``tmp`` with two renames; the old one is deleted
    last. A crash between the renames leaves ``.NAME.old`` whole (:func:`recover_swap` restores it)."""
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.replace(old)
    tmp.replace(path)
    if old.is_dir():
        shutil.rmtree(old)
    elif old.exists():
        old.unlink()


def recover_swap(path: Path) -> None:
    """Put back a checkpoint folder a crash left as ``.NAME.old`` between the renames of
    :func:`swap_into_place`."""
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        old.replace(path)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` as data-parallel FSDP2 over every process.

    Args:
        param_dtype, reduce_dtype, activation_checkpointing, reshard_after_forward, cpu_offload:
            the :class:`Sharding` the modules apply in ``configure_model``.
        save_distributed_checkpoint: ``true``: checkpoints are folders of per-rank shards;
            ``false``: one consolidated file gathered on rank 0 (see the module docstring).
        process_group_backend: ``nccl`` on GPUs, ``gloo`` on CPUs (default: by device).
        timeout: how long a collective may wait for the other ranks.
    """

    def __init__(
        self,
        param_dtype: Dtype | None = None,
        reduce_dtype: Dtype | None = None,
        activation_checkpointing: bool = False,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            data_parallel_size="auto", tensor_parallel_size=1, save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend, timeout=timeout,
        )  # fmt: skip
        self.sharding = Sharding(param_dtype, reduce_dtype, activation_checkpointing, reshard_after_forward, cpu_offload)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    # ---- save ------------------------------------------------------------------------------------
    def lightning_module_state_dict(self) -> dict[str, Any]:
        state = checkpoint_tensors(self.lightning_module)
        return state if self._save_distributed_checkpoint else full_tensors(state)

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)  # rank 0, our atomic CheckpointIO
        import torch.distributed.checkpoint as dcp

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.is_global_zero:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier()
        tmp.mkdir(parents=True, exist_ok=True)
        shards = {"state_dict": checkpoint.pop("state_dict")}
        shards.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        dcp.save(shards, checkpoint_id=tmp)
        if self.is_global_zero:
            torch.save(checkpoint, tmp / META)
        self.barrier()
        if self.is_global_zero:
            swap_into_place(tmp, path)
        self.barrier()

    # ---- load ------------------------------------------------------------------------------------
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Load the module's checkpoint tensors in place, the optimiser states, and return the rest.

        Always as data: ``weights_only=True`` whatever the caller asks, the shard index through
        :func:`index_checked_reader`."""
        from lightning.fabric.strategies.model_parallel import _rekey_optimizer_state_if_needed
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(str(checkpoint_path)))
        recover_swap(path)
        module = self.lightning_module
        targets = checkpoint_tensors(module)
        if path.is_dir():
            import torch.distributed.checkpoint as dcp

            dcp.load({"state_dict": targets}, storage_reader=index_checked_reader(path))
            for i, optimizer in enumerate(self.optimizers):
                state = {f"optimizer_{i}": get_optimizer_state_dict(module, optimizer)}
                dcp.load(state, storage_reader=index_checked_reader(path))
                set_optimizer_state_dict(module, optimizer, optim_state_dict=state[f"optimizer_{i}"],
                                         options=StateDictOptions(cpu_offload=True))  # fmt: skip
            return torch.load(path / META, map_location="cpu", weights_only=True)
        checkpoint = torch.load(path, mmap=True, map_location="cpu", weights_only=True)
        load_full_tensors(targets, checkpoint.pop("state_dict"))
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        for i, optimizer in enumerate(self.optimizers):
            state = _rekey_optimizer_state_if_needed(checkpoint["optimizer_states"][i], module)
            set_optimizer_state_dict(module, optimizer, optim_state_dict=state, options=options)
        return checkpoint


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles the shard index of a ``torch.distributed.checkpoint`` folder (``.metadata``,
    which torch writes and reads with plain pickle) allowing only the classes such an index holds."""

    MODULES = ("torch.distributed.checkpoint.metadata",)
    NAMES = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
             ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),
             ("pathlib", "WindowsPath"), ("collections", "OrderedDict")}  # fmt: skip

    def find_class(self, module: str, name: str) -> Any:
        if module in self.MODULES or (module, name) in self.NAMES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata names {module}.{name}, which a shard index never holds")


def index_checked_reader(path: str | Path) -> Any:
    """A ``FileSystemReader`` for a shard folder whose index is read by :class:`_MetadataUnpickler`
    (torch's own reader unpickles ``.metadata`` freely: a crafted folder would run code)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class IndexCheckedReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return IndexCheckedReader(path)


def read_sharded_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint folder of :class:`FSDP2Strategy` as one plain dict (``state_dict`` included,
    optimiser states left out), read in one process without running code from it: ``meta.pt``
    loads with ``weights_only=True``, the shard index through :class:`_MetadataUnpickler`, and
    only tensors are read from the shards."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    path = Path(path)
    recover_swap(path)
    state: dict[str, Any] = {}
    _load_state_dict(state, storage_reader=index_checked_reader(path), planner=_EmptyStateDictLoadPlanner(keys={"state_dict"}),
                     no_dist=True)  # fmt: skip
    checkpoint = torch.load(path / META, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = state.get("state_dict", {})
    return checkpoint


def decoder_layer_policy(module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
    """FSDP1 auto-wrap policy (``recipes/strategies/fsdp1.yaml``): wrap every ``*DecoderLayer``
    (Llama, Qwen2, Mistral, Gemma…); the root wraps the rest."""
    return True if recurse else type(module).__name__.endswith("DecoderLayer")
