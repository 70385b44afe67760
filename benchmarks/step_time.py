"""Train-step cost of each quantization method relative to FP, measured side by side in one run.

    python benchmarks/step_time.py [--sizes tiny,cpu_m] [--methods fp,b158,bitnet,a48,fbi] [--reps 5]
    python benchmarks/step_time.py --sizes small_2l,1b_1l --methods fp,b158,b158+int8 --dtype bfloat16

A method written `NAME+int8` is NAME with `config.model.int8_matmul=True` (the forward of every
quantized projection as an int8 × int8 → int32 dot, bitjax.quant.int8_matmul).
                                    [--config configs/transformer.py[:ARG=V,…]]

Each (size, method) is the config file's `get_config('quant=<method>,size=<size>')` (any model family's
config taking those arguments, e.g. configs/mamba2.py), with --batch × --seq_len and one device.
For each size, every method's jitted train step (forward + backward + AdamW, the trainer's own
`Setup.train_step`) is compiled, warmed up, then timed in interleaved rounds (fp, b158, …, fp, b158, …)
so drift in machine load hits all methods alike. Reports the median step time and the ratio to fp.
Data: fixed pre-built batches from the embedded corpus (input pipeline excluded).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bitjax import sweep
from bitjax.train import trainer

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "transformer.py")
# Extra CPU-sized transformer shapes beside the presets: size → (preset it starts from, config.model overrides).
# small_2l / 1b_1l: the `small` / `1b` presets' layer shapes with fewer layers (the per-layer cost ratio
# is the model's; a CPU runs them in seconds per step).
EXTRA = {
    "cpu_m": ("tiny", dict(d_model=512, n_layers=4, n_heads=8, n_kv_heads=4, mlp_dim=1536)),
    "small_2l": ("small", dict(n_layers=2)),
    "1b_1l": ("1b", dict(n_layers=1, remat_policy="none")),
}


def make_config(method, size, batch, seq_len, dtype=None, config=CONFIG):
    """config = 'FILE[:ARG=V,…]': FILE's config at quant=<method>, size=<size>, on one device."""
    method, _, variant = method.partition("+")
    if variant not in ("", "int8"):
        raise ValueError(f"unknown method variant {variant!r} (only NAME+int8)")
    path, _, extra = config.partition(":")
    base, over = EXTRA.get(size, (size, {}))
    args = {**sweep.split_arg(extra), "quant": method, "size": base}
    c = sweep.build_config([f"--config={path}:" + ",".join(f"{k}={v}" for k, v in args.items())])
    if over and c.model.name != "transformer":
        raise SystemExit(f"--sizes {size}: a transformer shape; {path} builds a {c.model.name!r} model")
    c.total_steps, c.batch_size, c.seq_len = 1000, batch, seq_len
    c.model.update(over)
    c.model.dtype = dtype or c.model.dtype
    if variant == "int8":
        c.model.int8_matmul = True
    c.mesh.update(dict(data=1, fsdp=1, tensor=1))
    return c


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=CONFIG, help="config file[:ARG=V,…] taking quant and size arguments")
    p.add_argument("--sizes", default="tiny,cpu_m")
    p.add_argument("--methods", default="fp,b158,bitnet,a48,fbi")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="steps per timed round")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    p.add_argument("--dtype", default=None, help="compute dtype (default: the config's; parameters stay float32)")
    args = p.parse_args()
    dev = jax.devices()[0]
    print(
        f"# {time.strftime('%Y-%m-%d')} · {dev.platform} ({dev.device_kind}) · {platform.processor() or platform.machine()}"
        f" · {os.cpu_count()} cores · jax {jax.__version__} · batch {args.batch}×{args.seq_len}"
        f" · compute {args.dtype or 'as configured'}"
    )
    methods = args.methods.split(",")
    for size in args.sizes.split(","):
        setups, states, batches = {}, {}, {}
        for m in methods:
            s = trainer.Setup(
                make_config(m, size, args.batch, args.seq_len, args.dtype, args.config), devices=jax.devices()[:1]
            )
            setups[m] = s
            states[m] = s.init_fn(jax.random.key(0))
            batches[m] = [s.train_batch(i) for i in range(args.steps)]
            for b in batches[m][:2]:  # compile + warm up
                states[m], out = s.train_step(states[m], b)
            jax.block_until_ready(out)
        times = {m: [] for m in methods}
        for _ in range(args.reps):
            for m in methods:
                t0 = time.perf_counter()
                for b in batches[m]:
                    states[m], out = setups[m].train_step(states[m], b)
                jax.block_until_ready(out)
                times[m].append((time.perf_counter() - t0) / args.steps)
        base = statistics.median(times["fp"]) if "fp" in times else None
        n = setups[methods[0]].num_params
        print(
            f"\n## size {size} ({n / 1e6:.2f}M params)\n\n| method | step time (ms, median of {args.reps}) | vs fp |\n|---|---|---|"
        )
        for m in methods:
            t = statistics.median(times[m])
            print(f"| {m} | {t * 1e3:.2f} | {t / base:.3f}× |" if base else f"| {m} | {t * 1e3:.2f} | – |")
        for m in methods:
            plain = m.partition("+")[0]
            if m != plain and plain in times:
                print(f"\n{m} / {plain}: {statistics.median(times[m]) / statistics.median(times[plain]):.3f}×")


if __name__ == "__main__":
    main()
