"""DPO step time and peak memory for the three ways to get reference log-probs.

``adapter``: LoRA policy, reference = the same network with adapters disabled (one copy of the
weights, two forwards per step). ``copy``: a frozen copy of the network (two copies, two forwards).
``precomputed``: reference log-probs computed once before training and read from the batch (one
copy, one forward; the pre-pass time is reported separately).

Each variant runs in its own process so peak memory is its own: ``torch.cuda.max_memory_allocated``
on a GPU, the process's peak resident set (``ru_maxrss``) on CPU.

Command: python bench/offline_rl.py [--hidden 512 --layers 8 --batch 4 --length 256 --steps 10]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_variant(args: argparse.Namespace) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from spare_train.policy import PolicyModule

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=max(args.hidden // 64, 1),
        num_key_value_heads=max(args.hidden // 64, 1), max_position_embeddings=args.length,
    )
    base = LlamaForCausalLM(cfg).to(dtype)
    policy = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules="all-linear"))
    module = PolicyModule.from_model(policy, objective="dpo", reference=args.variant).to(dev)
    if args.variant == "copy":
        module._frozen[0].to(dev)
    R, Lx = 2 * args.batch, args.length
    ids = torch.randint(0, args.vocab, (R, Lx), device=dev)
    mask = torch.zeros(R, Lx, dtype=torch.bool, device=dev)
    mask[:, Lx // 4 :] = True
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": mask,
             "step_ids": torch.zeros_like(ids), "step_labels": torch.ones(R, 1, device=dev), "num_completions": 2}
    prepass = 0.0
    if args.variant == "precomputed":
        t = time.perf_counter()
        with torch.no_grad():
            batch["ref_logps"] = module.token_logps(batch)
        prepass = time.perf_counter() - t
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for i in range(args.warmup + args.steps):
        sync()
        t = time.perf_counter()
        loss, _ = module.compute_loss(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    times.sort()
    return {"variant": args.variant, "device": dev.type, "step_s": times[len(times) // 2],
            "peak_mib": peak, "prepass_s_per_batch": prepass,
            "params_m": sum(p.numel() for p in base.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=["adapter", "copy", "precomputed"])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step")
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    rows = []
    for variant in ("adapter", "copy", "precomputed"):
        cmd = [sys.executable, __file__, "--variant", variant] + [
            f"--{k}={v}" for k, v in vars(args).items() if k != "variant"
        ]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    r0 = rows[0]
    print(f"DPO step, LoRA r=16 on a {r0['params_m']:.0f}M-parameter Llama, {args.batch} pairs x {args.length} "
          f"tokens, {r0['device']}")
    print("| reference | step (s, median) | peak memory (MiB) | pre-pass (s per batch) |")
    print("|---|---|---|---|")
    for r in rows:
        pre = f"{r['prepass_s_per_batch']:.3f}" if r["variant"] == "precomputed" else "-"
        print(f"| {r['variant']} | {r['step_s']:.3f} | {r['peak_mib']:.0f} | {pre} |")


if __name__ == "__main__":
    main()
