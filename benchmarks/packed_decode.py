"""Packed 2-bit inference vs bf16 weights: projection bytes in device memory and greedy decode tokens/s.

    python benchmarks/packed_decode.py [--sizes tiny,cpu_m,small] [--tokens 64] [--batch 1] [--reps 3]

Three twins of one random-init b158 model (bfloat16 compute), timed side by side in interleaved rounds:
  bf16     each projection holds W̃ = codes·γ precomputed in bfloat16 (what an unpacked export ships)
  packed   bitjax.export.packed.PackedDense: uint8 codes (2 bits/weight) + 1/γ, unpacked inside the matmul
  latent   the training model: float32 latent kernels re-quantized every call
Decode = bitjax.eval.sample.generate (one jitted prefill + fori_loop of one-token steps), greedy, a
prompt of 8 tokens; tokens/s counts generated tokens only, compile excluded. The three must produce the
same tokens (checked). Weight bytes count the 7 projections of every layer (embeddings excluded).
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
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bitjax.eval.sample import generate
from bitjax.export.packed import map_projections, pack_model, projection_bytes, projections
from bitjax.models import transformer

EXTRA = {"cpu_m": dict(d_model=512, n_layers=4, n_heads=8, n_kv_heads=4, mlp_dim=1536)}


class Bf16Dense(nnx.Module):
    """W̃ precomputed in bfloat16; the same activation quantizer and matmul as BitDense."""

    def __init__(self, layer):
        self.w = nnx.Variable(layer.quantized_kernel().astype(jnp.bfloat16))
        self.quant = layer.quant

    def __call__(self, x):
        x = self.quant.quantize_act(x.astype(jnp.bfloat16))
        return jnp.einsum("...i,io->...o", x, self.w[...], preferred_element_type=jnp.float32).astype(jnp.bfloat16)


def bf16_model(model):
    return map_projections(model, Bf16Dense)


def bf16_bytes(model):
    """Bytes of the projections' W̃ in bfloat16 (what bf16_model holds), from the latent model."""
    return sum(2 * m.kernel[...].size for m in projections(model))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="tiny,cpu_m")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--vocab", type=int, default=384)
    args = p.parse_args()
    print(f"# {platform.node()} · {jax.devices()[0].device_kind} · jax {jax.__version__}")
    print("| size | weights | proj. bytes | × of bf16 | decode tok/s | × of bf16 |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        cfg = transformer.default_config()
        cfg.update(transformer.SIZES.get(size) or EXTRA[size])
        cfg.update(dict(vocab_size=args.vocab, dtype="bfloat16", remat_policy="none"))
        cfg.quant.method = "b158"
        latent = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
        models = {"bf16": bf16_model(latent), "packed": pack_model(latent), "latent": latent}
        prompt = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (args.batch, 8)), jnp.int32)
        outs = {k: np.asarray(generate(m, prompt, args.tokens, temperature=0)) for k, m in models.items()}  # compile
        same = all((o == outs["bf16"]).all() for o in outs.values())
        times = {k: [] for k in models}
        for _ in range(args.reps):
            for k, m in models.items():
                t = time.perf_counter()
                jax.block_until_ready(generate(m, prompt, args.tokens, temperature=0))
                times[k].append(time.perf_counter() - t)
        tps = {k: args.tokens * args.batch / statistics.median(v) for k, v in times.items()}
        nbytes = {
            "bf16": bf16_bytes(latent),
            "packed": projection_bytes(models["packed"]),
            "latent": projection_bytes(latent),
        }
        for k in models:
            print(
                f"| {size} | {k} | {nbytes[k] / 2**20:.2f} MiB | {nbytes[k] / nbytes['bf16']:.3f} | "
                f"{tps[k]:.0f} | {tps[k] / tps['bf16']:.2f} |"
            )
        print(f"<!-- {size}: greedy tokens identical across the three: {same} -->")


if __name__ == "__main__":
    main()
