"""Peak device memory of the train step, b1.58 vs FP, from XLA's compiled memory analysis.

    python benchmarks/memory.py [--sizes small,1b] [--methods fp,b158,b158+int8] [--batch 8] [--seq_len 512]
                                [--remat_policy none|full|save_quantized|save_dots]

For each size and method the trainer's own jitted step (`trainer.Setup.train_step`: forward + backward
+ AdamW, float32 latent parameters and both Adam moments, the state donated) is lowered and compiled on
abstract inputs (ShapeDtypeStructs: nothing is allocated, so the 1b shapes need no real memory) and
`compiled.memory_analysis()` is printed:

    peak ≈ argument + output + temp − alias     (alias: output buffers that reuse donated arguments)

argument = state (params + opt state) + batch; temp = activations saved for the backward, gradients and
scratch, as XLA's buffer assignment for this backend packs them. `NAME+int8` = NAME with
config.model.int8_matmul=True. Figures are for the backend this runs on (CPU here unless an accelerator
is present); XLA's GPU/TPU buffer assignment differs in absolute terms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.step_time import make_config
from bitjax.run import checkpoint as ckpt_lib
from bitjax.train import trainer

FIELDS = (
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "temp_size_in_bytes",
    "generated_code_size_in_bytes",
)


def analyse(method, size, batch, seq_len, dtype, vocab, remat_policy=None):
    """(memory stats dict, parameter count, layout) of one compiled train step."""
    c = make_config(method, size, batch, seq_len, dtype)
    c.model.vocab_size = vocab
    c.model.remat_policy = remat_policy or c.model.remat_policy
    setup = trainer.Setup(c, devices=jax.devices()[:1])
    state = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_sharding)
    abstract_batch = {
        k: jax.ShapeDtypeStruct((batch, seq_len), dt, sharding=setup.batch_sharding)
        for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    }
    stats = setup.train_step.lower(state, abstract_batch).compile().memory_analysis()
    out = {f: int(getattr(stats, f)) for f in FIELDS}
    out["peak"] = (
        out["argument_size_in_bytes"]
        + out["output_size_in_bytes"]
        + out["temp_size_in_bytes"]
        - out["alias_size_in_bytes"]
    )
    return out, setup.num_params, f"{c.model.remat_policy}, scan_layers={c.model.scan_layers}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="small,1b")
    p.add_argument("--methods", default="fp,b158,b158+int8")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=512)
    p.add_argument("--dtype", default="bfloat16", help="compute dtype (parameters stay float32)")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--remat_policy", help="config.model.remat_policy for every size (default: each preset's)")
    args = p.parse_args()
    dev = jax.devices()[0]
    print(
        f"# {time.strftime('%Y-%m-%d')} · {dev.platform} ({dev.device_kind}) · jax {jax.__version__} · "
        f"batch {args.batch}×{args.seq_len} · compute {args.dtype} · float32 params + AdamW · vocab {args.vocab}"
    )
    mib = lambda b: f"{b / 2**20:.1f}"
    methods = args.methods.split(",")
    for size in args.sizes.split(","):
        rows = {}
        for m in methods:
            t0 = time.perf_counter()
            rows[m], n, remat = analyse(m, size, args.batch, args.seq_len, args.dtype, args.vocab, args.remat_policy)
            print(f"  compiled {size}/{m} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        print(
            f"\n## size {size} ({n / 1e6:.1f}M params, remat_policy={remat})\n\n"
            "| method | argument MiB | output MiB | alias MiB | temp MiB | code MiB | peak MiB | vs fp |\n"
            "|---|---|---|---|---|---|---|---|"
        )
        base = rows["fp"]["peak"] if "fp" in rows else None
        for m, r in rows.items():
            print(
                f"| {m} | {mib(r['argument_size_in_bytes'])} | {mib(r['output_size_in_bytes'])} | "
                f"{mib(r['alias_size_in_bytes'])} | {mib(r['temp_size_in_bytes'])} | "
                f"{r['generated_code_size_in_bytes'] / 2**20:.2f} | {mib(r['peak'])} | "
                + (f"{r['peak'] / base:.3f}× |" if base else "– |")
            )


if __name__ == "__main__":
    main()
