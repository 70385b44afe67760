"""The online Hadamard transform of BitNet v2's H-BitLinear (Wang, Ma, Wei 2025, arXiv 2504.18415, §2).

H-BitLinear rotates a projection's input by a normalised Hadamard matrix before quantizing it, which
spreads the outlier channels of o_proj's and down_proj's inputs over all features (the paper's Figure 1:
sharp, outlier-heavy distributions become Gaussian-like) so they survive 8- and 4-bit activations. The
Hadamard matrix is Sylvester's recursion,

    H_0 = (1),  H_m = 1/√2 · [[H_{m−1}, H_{m−1}], [H_{m−1}, −H_{m−1}]],   size 2^m,

orthogonal and symmetric (H·H = I), applied per token along the feature axis with the fast Walsh–Hadamard
transform: m butterfly stages (a, b) → ((a + b), (a − b))/√2, O(n log n) instead of the matrix's O(n²).

Sizes that are not a power of two (bitjax's `tiny` MLP width 384 = 3·128, SmolLM2's 1536 = 3·512) get the
block-diagonal transform diag(H_m, …, H_m) with 2^m the largest power of two dividing n: still orthogonal
and symmetric, mixing within each block of 2^m consecutive features. (Our choice, stated: the paper's
sizes are powers of two or multiples of large ones; QuaRot-style Hadamards of size 12·2^m are not used.)

The weights are not transformed: BitNet v2 trains the ternary W of an H-BitLinear in the rotated basis
(y = Q_w(W)·Q_a(H·x)), so there is nothing to fuse into the weights at export, and the transform runs on
the activations at inference as it does in training.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def hadamard_block(n: int) -> int:
    """The block size of the transform of an n-wide axis: the largest power of two dividing n."""
    if n < 1:
        raise ValueError(f"Hadamard transform of an empty axis (size {n})")
    return n & -n


def fwht(x: jax.Array) -> jax.Array:
    """x (…, n) · diag(H_m, …, H_m), H_m the normalised 2^m-point Sylvester Hadamard matrix (module doc).

    Same shape and dtype as x; computed in float32. Linear, so its gradient is the same transform (H is
    symmetric and orthogonal) and autodiff gives it exactly.
    """
    n = x.shape[-1]
    blk = hadamard_block(n)
    y = x.astype(jnp.float32).reshape(*x.shape[:-1], n // blk, blk)
    h = 1
    while h < blk:
        # pairs (i, i + h) inside blocks of 2h: Sylvester's ordering (scipy.linalg.hadamard's)
        z = y.reshape(*y.shape[:-1], blk // (2 * h), 2, h)
        a, b = z[..., 0, :], z[..., 1, :]
        y = jnp.stack([a + b, a - b], axis=-2).reshape(y.shape)
        h *= 2
    return (y * (blk**-0.5)).reshape(x.shape).astype(x.dtype)
