"""Compile time of the 7b train step on an 8-device CPU mesh: layers as a Python loop vs scan_layers.

    python benchmarks/compile_time.py [--layers 8,16,32] [--layouts loop,scan] [--size 7b] [--method b158]

The trainer's own jitted train step (forward + backward + AdamW, `Setup.train_step`) of the size preset
with n_layers overridden, fsdp over 8 emulated CPU devices (JAX_NUM_CPU_DEVICES=8, set here). Inputs are
abstract (jax.ShapeDtypeStruct with shardings), so nothing of the 7b model is allocated: the numbers are
tracing (in Setup) + lowering to StableHLO ('lower') and XLA's compile of it ('compile'), wall clock, and
the CPU time of lower+compile (all threads of the process; steadier than wall clock on a loaded machine).
Each (layout, depth) runs in a fresh process so no in-memory cache is shared. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(size: str, n_layers: int, scan: bool, method: str, batch: int, seq_len: int) -> dict:
    """One (layout, depth) in this process: {'setup_s', 'lower_s', 'compile_s', 'params_b'}."""
    os.environ["JAX_NUM_CPU_DEVICES"] = "8"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, ROOT)
    import jax
    import jax.numpy as jnp

    from bitjax.models import transformer
    from bitjax.run import checkpoint as ckpt_lib
    from bitjax.run import config as config_lib
    from bitjax.train import trainer

    c = config_lib.trainer_config()
    c.total_steps, c.batch_size, c.seq_len = 1000, batch, seq_len
    c.mesh.update(dict(data=1, fsdp=8, tensor=1))
    c.model = transformer.default_config()
    c.model.update(transformer.SIZES[size])
    c.model.update(dict(n_layers=n_layers, scan_layers=scan, vocab_size=32000))
    c.model.quant.method = method
    t0 = time.perf_counter()
    setup = trainer.Setup(c)  # validates, builds the model abstractly, traces the step
    t1 = time.perf_counter()
    state = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_sharding)
    batch_in = {
        k: jax.ShapeDtypeStruct((batch, seq_len), dt, sharding=setup.batch_sharding)
        for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    }
    c1 = time.process_time()
    lowered = setup.train_step.trace(state, batch_in).lower()
    t2 = time.perf_counter()
    lowered.compile()
    t3, c3 = time.perf_counter(), time.process_time()
    return {
        "setup_s": t1 - t0,
        "lower_s": t2 - t1,
        "compile_s": t3 - t2,
        "cpu_s": c3 - c1,
        "params_b": setup.num_params / 1e9,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="7b")
    p.add_argument("--layers", default="8,16,32")
    p.add_argument("--layouts", default="loop,scan")
    p.add_argument("--method", default="b158")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=2048)
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: 'layout,n_layers' in this process
    args = p.parse_args()
    if args.one:
        layout, n = args.one.split(",")
        print(json.dumps(measure(args.size, int(n), layout == "scan", args.method, args.batch, args.seq_len)))
        return
    import jax

    print(
        f"# {time.strftime('%Y-%m-%d')} · {platform.processor() or platform.machine()} · {os.cpu_count()} cores"
        f" · load {os.getloadavg()[0]:.1f} · jax {jax.__version__} · {args.size} {args.method} train step "
        f"(fwd+bwd+AdamW), batch {args.batch}×{args.seq_len}, mesh fsdp=8 (8 emulated CPU devices)"
    )
    print(
        "\n| layout | layers | params | setup+trace (s) | lower (s) | compile (s) | lower+compile (s) | "
        "lower+compile CPU (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for layout in args.layouts.split(","):
        for n in map(int, args.layers.split(",")):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    f"{layout},{n}",
                    "--size",
                    args.size,
                    "--method",
                    args.method,
                    "--batch",
                    str(args.batch),
                    "--seq_len",
                    str(args.seq_len),
                ],
                check=False,  # a failed point is a row of the table, not the end of the sweep
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(f"| {layout} | {n} | failed: {out.stderr.strip().splitlines()[-1][:200]} ||||||")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"| {layout} | {n} | {r['params_b']:.2f}B | {r['setup_s']:.1f} | {r['lower_s']:.1f} | "
                f"{r['compile_s']:.1f} | {r['lower_s'] + r['compile_s']:.1f} | {r['cpu_s']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
