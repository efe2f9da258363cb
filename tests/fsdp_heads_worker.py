"""Two gloo processes: each PRM head, sharded with FSDP2 as ``PRMModule.configure_model`` does, gives
the loss and gradients of the same model unsharded, on the same batch. Run by
tests/test_fsdp_heads.py as ``python fsdp_heads_worker.py MODEL_FOLDER OUT.json`` (rank 0 writes)."""

from __future__ import annotations

import copy
import json
import os
import sys

import torch

CASES = [  # (name, head, dtype, lora, quantization)
    ("lm_tokens-full-fp32", "lm_tokens", "float32", False, None),
    ("classifier-full-fp32", "classifier", "float32", False, None),
    ("lm_tokens-lora-fp32", "lm_tokens", "float32", True, None),
    # bf16 base with fp32 LoRA, bf16 new-token rows and an fp32 classifier: mixed trainable dtypes
    ("classifier-lora-bf16", "classifier", "bfloat16", True, None),
    ("lm_tokens-qlora-nf4", "lm_tokens", "bfloat16", True, "nf4"),
]


def batch_for(module):
    from spare_train.data.prm import StepCollator
    from spare_train.records import Prompt, StepRecord
    from spare_train.tokenize import tokenize_records

    records = [StepRecord(id=str(i), group_id=str(i), prompt=Prompt(f"What is {i} + 3 * 4?"),
                          steps=[f"3 * 4 = {12 + i % 2}", f"{i} + 12 = {i + 12}", f"The answer is {i + 12}."],
                          labels=[1.0 - (i % 2), 0.0 if i % 2 else 1.0, 0.5]) for i in range(6)]  # fmt: skip
    examples = tokenize_records(records, module.tokenizer, module.format_config)
    return StepCollator(module.tokenizer.pad_token_id)(examples)


def loss_and_grads(module, batch):
    from torch.distributed.tensor import DTensor

    module.zero_grad(set_to_none=True)
    loss = module.loss(module(batch), batch)
    loss.backward()
    grads = {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).float()
             for n, p in module.named_parameters() if p.requires_grad and p.grad is not None}  # fmt: skip
    return float(loss), grads


def main(rank: int, folder: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from spare_train.models.backbone import BackboneConfig, LoraSettings
    from spare_train.models.parallel import shard_for_strategy
    from spare_train.prm.module import PRMModule

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("TEST_PORT", "29561"))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    results = {}
    for name, head, dtype, lora, quant in CASES:
        torch.manual_seed(0)
        bb = BackboneConfig(name_or_path=folder, dtype=dtype, quantization=quant,
                            lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None)  # fmt: skip
        module = PRMModule(backbone=bb, head=head)
        module.configure_model()
        reference = copy.deepcopy(module)  # the same weights, never sharded
        batch = batch_for(module)
        want_loss, want = loss_and_grads(reference, batch)
        module._device_mesh = mesh
        assert shard_for_strategy(module, module.model, root=module.scorer)
        sharded = [n for n, p in module.named_parameters() if isinstance(p, DTensor)]
        got_loss, got = loss_and_grads(module, batch)
        assert got.keys() == want.keys(), sorted(set(got) ^ set(want))[:5]
        results[name] = {
            "loss": got_loss, "want_loss": want_loss, "sharded": len(sharded),
            "params": sum(1 for _ in module.parameters()),
            "max_grad_diff": max(float((got[k] - want[k]).abs().max()) for k in want),
            "max_grad": max(float(want[k].abs().max()) for k in want),
        }  # fmt: skip
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(main, args=(sys.argv[1], sys.argv[2]), nprocs=2)
