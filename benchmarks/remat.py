"""What each config.model.remat_policy costs: step time, compiled memory, and weight quantizations redone.

    python benchmarks/remat.py [--methods fp,b158] [--policies none,full,save_quantized,save_dots]
                               [--layouts scan] [--d_model 512 --n_layers 4 --batch 16 --seq_len 128]

For each (layout, method, policy) the trainer's jitted train step (forward + backward + AdamW,
`Setup.train_step`, one CPU device) is compiled and timed in interleaved rounds (as
benchmarks/step_time.py). Columns:
  temp MB     compiled.memory_analysis().temp_size_in_bytes: XLA's peak of temporaries (activations
              kept for the backward live here; parameters and optimizer state are arguments, aliased).
  bwd W̃ ops   weight roundings (ternary_absmean's round(W·s), kernel-shaped) in the backward pass of
              the compiled HLO (op_name 'transpose(…)'): > 0 means the backward quantizes weights again.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bitjax.models import transformer
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import config as config_lib
from bitjax.train import trainer


def make_config(args, layout, method, policy):
    c = config_lib.trainer_config()
    c.total_steps, c.batch_size, c.seq_len = 1000, args.batch, args.seq_len
    c.model = transformer.default_config()
    c.model.update(
        dict(
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=args.d_model // 64,
            n_kv_heads=args.d_model // 128,
            mlp_dim=3 * args.d_model,
            vocab_size=None,
            scan_layers=layout == "scan",
            remat_policy=policy,
        )
    )
    c.model.quant.method = method
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    return c


def backward_weight_roundings(hlo: str, batch: int, seq_len: int) -> int:
    """Rounding ops of non-activation shape in the backward (op_name with 'transpose(')."""
    act = f"[{batch},{seq_len},"
    return sum(1 for line in hlo.splitlines() if "round-nearest" in line and act not in line and "transpose(" in line)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--methods", default="fp,b158")
    p.add_argument("--policies", default="none,full,save_quantized,save_dots")
    p.add_argument("--layouts", default="scan")
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--n_layers", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    args = p.parse_args()
    print(
        f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores"
        f" · load {os.getloadavg()[0]:.1f} · jax {jax.__version__} · d_model {args.d_model}, {args.n_layers} "
        f"layers, batch {args.batch}×{args.seq_len}, 1 CPU device"
    )
    runs = {}
    for layout in args.layouts.split(","):
        for method in args.methods.split(","):
            for policy in args.policies.split(","):
                s = trainer.Setup(make_config(args, layout, method, policy), devices=jax.devices()[:1])
                abstract = ckpt_lib.abstract_with_shardings(s.abstract_state, s.state_sharding)
                batch = {
                    k: jax.ShapeDtypeStruct((args.batch, args.seq_len), dt, sharding=s.batch_sharding)
                    for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
                }
                compiled = s.train_step.lower(abstract, batch).compile()
                mem = compiled.memory_analysis()
                state = s.init_fn(jax.random.key(0))
                batches = [s.train_batch(i) for i in range(args.steps)]
                for b in batches[:2]:  # warm up: the AOT-compiled step itself runs (no second compile)
                    state, out = compiled(state, b, s.teacher_params)
                jax.block_until_ready(out)
                runs[layout, method, policy] = dict(
                    step=compiled,
                    state=state,
                    batches=batches,
                    times=[],
                    temp=mem.temp_size_in_bytes / 2**20,
                    bwd=backward_weight_roundings(compiled.as_text(), args.batch, args.seq_len),
                )
    for _ in range(args.reps):
        for r in runs.values():
            t0 = time.perf_counter()
            for b in r["batches"]:
                r["state"], out = r["step"](r["state"], b, {})
            jax.block_until_ready(out)
            r["times"].append((time.perf_counter() - t0) / args.steps)
    print(
        f"\n| layout | method | remat_policy | step (ms, median of {args.reps}) | vs none | temp MB | "
        f"bwd W̃ ops |\n|---|---|---|---|---|---|---|"
    )
    for (layout, method, policy), r in runs.items():
        t = statistics.median(r["times"])
        base = runs.get((layout, method, "none"))
        ratio = f"{t / statistics.median(base['times']):.2f}×" if base else "–"
        print(f"| {layout} | {method} | {policy} | {t * 1e3:.1f} | {ratio} | {r['temp']:.1f} | {r['bwd']} |")


if __name__ == "__main__":
    main()
