"""SSD chunked algorithm vs the sequential scan (bitjax.nn.ssd), measured side by side in one run.

    python benchmarks/ssd_scan.py [--length 2048] [--chunks 64,128,256] [--reps 5] [--grad]

One Mamba-2 layer's SSD at the 780M preset's head shape (H = 48 heads of P = 64, N = 128, G = 1) by
default, batch 1: `ssd_chunked` at each chunk size and `ssd_sequential` (a `lax.scan` of the one-step
update), each jitted, warmed up, then timed in interleaved rounds so drift in machine load hits all alike.
Reports the median time and each chunked variant's speed-up over the scan. --grad times value + gradient.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bitjax.nn.ssd import ssd_chunked, ssd_sequential


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--length", type=int, default=2048)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=48)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--d_state", type=int, default=128)
    p.add_argument("--ngroups", type=int, default=1)
    p.add_argument("--chunks", default="64,128,256")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds")
    p.add_argument("--grad", action="store_true", help="time value and gradient (training) instead of forward")
    args = p.parse_args()
    b, l, h, pd, n, g = args.batch, args.length, args.heads, args.headdim, args.d_state, args.ngroups
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((b, l, h, pd)), jnp.float32)
    dt = jnp.asarray(np.log1p(np.exp(r.standard_normal((b, l, h)) - 4)), jnp.float32)
    A = -jnp.asarray(r.uniform(1, 16, h), jnp.float32)
    B, C = (jnp.asarray(r.standard_normal((b, l, g, n)), jnp.float32) for _ in range(2))
    D = jnp.ones((h,), jnp.float32)

    fns = {f"chunked Q={q}": functools.partial(ssd_chunked, chunk_size=int(q), D=D) for q in args.chunks.split(",")}
    fns["sequential scan"] = lambda *a: ssd_sequential(*a, D=D)
    if args.grad:
        fns = {k: jax.grad(lambda *a, f=f: jnp.sum(f(*a)[0] ** 2), argnums=(0, 1, 3, 4)) for k, f in fns.items()}
    fns = {k: jax.jit(f) for k, f in fns.items()}
    ref = jax.block_until_ready(fns["sequential scan"](x, dt, A, B, C))
    for k, f in fns.items():  # compile, warm up, and check each agrees with the scan
        out = jax.block_until_ready(f(x, dt, A, B, C))
        err = max(
            float(jnp.abs(u - v).max() / jnp.abs(v).max()) for u, v in zip(jax.tree.leaves(out), jax.tree.leaves(ref))
        )
        assert err < 1e-4, (k, err)
    times = {k: [] for k in fns}
    for _ in range(args.reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(x, dt, A, B, C))
            times[k].append(time.perf_counter() - t0)
    dev = jax.devices()[0]
    print(
        f"# {time.strftime('%Y-%m-%d')} · {dev.platform} ({dev.device_kind}) · {platform.processor() or platform.machine()}"
        f" · {os.cpu_count()} cores · jax {jax.__version__} · {'value+grad' if args.grad else 'forward'} · "
        f"B={b} L={l} H={h} P={pd} N={n} G={g}"
    )
    scan = statistics.median(times["sequential scan"])
    print("| variant | median ms | speed-up vs scan |\n|---|---|---|")
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"| {k} | {med * 1e3:.1f} | {scan / med:.2f}× |")


if __name__ == "__main__":
    main()
