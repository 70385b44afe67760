"""b1.58 / FP train-step cost beside a peer: HF transformers' AutoBitLinear (torch) and bitjax's BitDense.

    python benchmarks/peer_autobitlinear.py [--d 1024] [--blocks 2] [--tokens 1024] [--reps 5] [--steps 5]

The same model in both libraries: `blocks` residual MLP blocks  h ← h + down(silu(up(h)))  with
up: d → 4d and down: 4d → d, no biases, float32 compute, loss mean(h²), one AdamW step
(lr 1e-3, weight decay 0.01) per train step on a fixed batch of `tokens` rows of width d.

* torch: `nn.Linear` (FP) vs `transformers.integrations.bitnet.AutoBitLinear(online_quant=True)`
  (b1.58: WeightQuant ternary absmean + ActQuant int8 absmax on every call, STE backward), eager,
  `torch.optim.AdamW`.
* bitjax: `Dense` (FP) vs `BitDense(QuantSpec('ternary_absmean', 'absmax8'))` (b1.58, the same values
  as AutoBitLinear's), and the same with `int8_matmul=True`; `jax.jit` of loss + grad + optax.adamw.

Every variant is built and warmed up (compile excluded), then timed in interleaved rounds so drift in
machine load hits all alike; medians are reported with the b1.58/FP ratio within each library. Prints a
message and exits 0 when torch or transformers is not installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torch_variant(quantized: bool, d: int, blocks: int, x_np):
    import torch
    from torch import nn
    from transformers.integrations.bitnet import AutoBitLinear

    torch.manual_seed(0)
    make = (
        (lambda i, o: AutoBitLinear(i, o, bias=False, online_quant=True))
        if quantized
        else (lambda i, o: nn.Linear(i, o, bias=False))
    )
    layers = nn.ModuleList([nn.ModuleDict({"up": make(d, 4 * d), "down": make(4 * d, d)}) for _ in range(blocks)])
    opt = torch.optim.AdamW(layers.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.from_numpy(x_np)

    def step():
        h = x
        for blk in layers:
            h = h + blk["down"](nn.functional.silu(blk["up"](h)))
        loss = (h * h).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step, lambda out: float(out.detach())


def jax_variant(spec_name: str, d: int, blocks: int, x_np):
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from bitjax.nn import BitDense
    from bitjax.quant import QuantSpec

    spec = QuantSpec() if spec_name == "fp" else QuantSpec("ternary_absmean", "absmax8")
    int8 = spec_name == "b158+int8"
    rngs = nnx.Rngs(0)
    make = lambda i, o, axes: BitDense(i, o, quant=spec, dtype=jnp.float32, axes=axes, int8_matmul=int8, rngs=rngs)
    model = nnx.List(
        [
            nnx.Dict({"up": make(d, 4 * d, ("embed", "mlp")), "down": make(4 * d, d, ("mlp", "embed"))})
            for _ in range(blocks)
        ]
    )
    graphdef, params = nnx.split(model)
    tx = optax.adamw(1e-3, weight_decay=0.01)
    state = {"params": params, "opt": tx.init(params)}
    x = jnp.asarray(x_np)

    def loss_fn(params, x):
        h = x
        for blk in nnx.merge(graphdef, params):
            h = h + blk["down"](jax.nn.silu(blk["up"](h)))
        return jnp.mean(h * h)

    @jax.jit
    def train_step(state, x):  # x an argument, not a constant XLA could fold the first quantizer into
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], x)
        updates, opt = tx.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, loss

    box = [state]

    def step():
        box[0], loss = train_step(box[0], x)
        return loss

    return step, lambda out: float(jax.block_until_ready(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--d", type=int, default=1024)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--tokens", type=int, default=1024, help="rows of the batch (batch × sequence)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    p.add_argument(
        "--torch_threads",
        type=int,
        default=1,
        help="torch intra-op threads; on a shared 2-core VM 2 OpenMP threads spin against the other "
        "jobs (one 128×512 linear took 265 ms with 2 threads vs 5.5 ms with 1)",
    )
    args = p.parse_args()
    try:
        import torch
        import transformers
        from transformers.integrations.bitnet import AutoBitLinear  # noqa: F401 (imported to check it exists)
    except ImportError as e:
        print(f"skipped: torch and transformers (with transformers.integrations.bitnet) are needed ({e})")
        return
    import jax

    torch.set_num_threads(args.torch_threads)
    x_np = np.random.default_rng(0).standard_normal((args.tokens, args.d)).astype(np.float32)
    variants = {
        ("torch", "fp"): torch_variant(False, args.d, args.blocks, x_np),
        ("torch", "b158"): torch_variant(True, args.d, args.blocks, x_np),
        ("bitjax", "fp"): jax_variant("fp", args.d, args.blocks, x_np),
        ("bitjax", "b158"): jax_variant("b158", args.d, args.blocks, x_np),
        ("bitjax", "b158+int8"): jax_variant("b158+int8", args.d, args.blocks, x_np),
    }
    print(
        f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores · "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads) · "
        f"transformers {transformers.__version__} · jax {jax.__version__} ({jax.devices()[0].platform})"
    )
    print(
        f"# {args.blocks} residual MLP blocks d={args.d} → {4 * args.d} → {args.d}, {args.tokens} tokens, "
        f"float32, forward + backward + AdamW; {args.reps} interleaved rounds of {args.steps} steps, median"
    )
    first_loss = {}
    for key, (step, finish) in variants.items():  # warm up (jit compile) and check both libraries train
        first_loss[key] = finish(step())
        finish(step())
    times = {k: [] for k in variants}
    for _ in range(args.reps):
        for key, (step, finish) in variants.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = step()
            finish(out)
            times[key].append((time.perf_counter() - t0) / args.steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| library | layer | step time (ms) | vs the library's fp | first loss |\n|---|---|---|---|---|")
    for (lib, name), t in med.items():
        print(f"| {lib} | {name} | {t * 1e3:.1f} | {t / med[(lib, 'fp')]:.3f}× | {first_loss[(lib, name)]:.5f} |")
    print(
        f"\nb1.58/FP: torch AutoBitLinear {med[('torch', 'b158')] / med[('torch', 'fp')]:.3f}×, "
        f"bitjax BitDense {med[('bitjax', 'b158')] / med[('bitjax', 'fp')]:.3f}× "
        f"(int8 matmul {med[('bitjax', 'b158+int8')] / med[('bitjax', 'fp')]:.3f}×)"
    )


if __name__ == "__main__":
    main()
