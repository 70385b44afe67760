"""Exact k-th largest value along the last axis, without a sort.

`lax.top_k` is a sort in disguise on CPU (~100 ms for a (16, 128, 384) activation on 2 cores).
For non-negative float32 the IEEE bit pattern, read as int32, is monotone in the value, so a
32-step bisection over int32 thresholds, each step one fused compare-and-count, finds the exact
k-th largest value: T* = max{T : #(bits ≥ T) ≥ k}. ~10× faster on CPU, bit-identical to top_k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def kth_largest(a: jax.Array, k: int) -> jax.Array:
    """The k-th largest entry of `a` (≥ 0, float) along the last axis, shape (…, 1), a's dtype.

    Ties count with multiplicity (as in top_k): with a = [3, 3, 1] and k = 2 the result is 3.
    NaNs are not supported (their bit patterns sort above +inf).
    """
    d = a.shape[-1]
    if not 1 <= k <= d:
        raise ValueError(f"k must be in [1, {d}], got {k}")
    bits = lax.bitcast_convert_type(a.astype(jnp.float32), jnp.int32)
    lo = jnp.zeros(a.shape[:-1] + (1,), jnp.int32)  # #(bits ≥ 0) = d ≥ k: always feasible
    hi = jnp.full_like(lo, jnp.iinfo(jnp.int32).max)  # the answer lies in [lo, hi]

    def body(_, bounds):
        lo, hi = bounds
        gap = hi - lo  # ≥ 0, so no overflow; mid = ⌈(lo + hi) / 2⌉
        mid = lo + gap // 2 + gap % 2
        ok = jnp.sum(bits >= mid, axis=-1, keepdims=True, dtype=jnp.int32) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

    lo, _ = lax.fori_loop(0, 32, body, (lo, hi))
    return lax.bitcast_convert_type(lo, jnp.float32).astype(a.dtype)
