"""Mamba-2's state space duality (SSD) layer as pure functions (Dao & Gu 2024, arXiv 2405.21060).

The selective SSM with scalar-times-identity A per head (paper §3–4, eq. 1 and §6):

    h_t = exp(Δ_t·A) · h_{t−1} + Δ_t · x_t ⊗ B_t        h_t ∈ R^{P×N} per head
    y_t = h_t · C_t  (+ D · x_t)                          y_t ∈ R^P

Shapes (b batch, l length, h heads, p head dim, g groups, n state): x [b, l, h, p], Δ = dt [b, l, h]
(already positive: the caller applies softplus(dt + dt_bias)), A [h] (negative), B, C [b, l, g, n],
D [h], state [b, h, p, n]. Head i reads the B, C of group i // (h/g) (paper §7.2, "multi-value /
grouped" heads; state-spaces/mamba and HF use the same order). Everything is computed in float32.

Three forms, equal up to float round-off (tests/test_ssd.py checks each against a numpy restatement):

* :func:`ssd_chunked` — the paper's chunked algorithm (§6, Listing 1 ``ssd_minimal_discrete``):
  quadratic "attention-like" blocks inside each chunk, a linear recurrence over chunk states between.
* :func:`ssd_sequential` — the recurrence above as one ``lax.scan`` of :func:`ssd_step`.
* :func:`ssd_step` — one time step, the O(1) update used for decoding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def segsum(x: jax.Array) -> jax.Array:
    """Stable segment sums: x [..., T] → [..., T, T] with out[i, j] = Σ_{k=j+1..i} x_k for j ≤ i, −inf above.

    exp(segsum(Δ·A)) is the 1-semiseparable mask L of the paper (§3.2, eq. 4; Listing 1 ``segsum``,
    the masked-cumsum version that never subtracts two large cumulative sums).
    """
    t = x.shape[-1]
    xx = jnp.broadcast_to(x[..., None], x.shape + (t,))  # xx[..., k, j] = x_k
    below = jnp.tril(jnp.ones((t, t), bool), k=-1)  # k > j
    s = jnp.cumsum(jnp.where(below, xx, 0.0), axis=-2)  # s[i, j] = Σ_{j<k≤i} x_k
    return jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)


def _grouped(v: jax.Array, g: int) -> jax.Array:
    """[..., h, X] → [..., g, h/g, X]: heads of one group side by side (head i in group i // (h/g))."""
    return v.reshape(v.shape[:-2] + (g, v.shape[-2] // g, v.shape[-1]))


def _check(x, dt, A, B, C):
    b, l, h, _ = x.shape
    g = B.shape[2]
    if dt.shape != (b, l, h) or A.shape != (h,) or B.shape[:2] != (b, l) or C.shape != B.shape or h % g:
        raise ValueError(
            f"SSD shapes: x {x.shape}, dt {dt.shape}, A {A.shape}, B {B.shape}, C {C.shape}; "
            f"need x [b, l, h, p], dt [b, l, h], A [h], B = C [b, l, g, n] with g dividing h"
        )


def ssd_chunked(x, dt, A, B, C, chunk_size: int, D=None, initial_state=None):
    """The SSD chunked algorithm (paper §6, Listing 1): → (y [b, l, h, p], final state [b, h, p, n]).

    With X = Δ·x and a = Δ·A, split the sequence into chunks of Q = chunk_size positions:
      1. diagonal blocks   Y_diag[l] = Σ_{s≤l} (C_l·B_s) · exp(Σ_{s<k≤l} a_k) · X_s     (within a chunk)
      2. chunk states      S_c = Σ_s exp(Σ_{k>s in chunk} a_k) · X_s ⊗ B_s
      3. recurrence        H_c = exp(Σ_{chunk c−1} a) · H_{c−1} + S_{c−1}, H_0 = initial_state
      4. state → output    Y_off[l] = exp(Σ_{k≤l in chunk} a_k) · H_c · C_l
    y = Y_diag + Y_off (+ D·x). A length not divisible by Q is padded with Δ = 0, x = 0: a padded step
    multiplies the state by exp(0) = 1 and adds 0, so the final state is the last real step's.
    Q is capped at the length (the same result, without computing a mostly-padded chunk).
    """
    _check(x, dt, A, B, C)
    f32 = jnp.float32
    x, dt, A, B, C = (v.astype(f32) for v in (x, dt, A, B, C))
    b, l, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    q = max(1, min(int(chunk_size), l))
    pad = -l % q
    if pad:
        padded = lambda v: jnp.pad(v, [(0, 0), (0, pad)] + [(0, 0)] * (v.ndim - 2))
        x, dt, B, C = padded(x), padded(dt), padded(B), padded(C)
    c = (l + pad) // q
    X = _grouped((x * dt[..., None]).reshape(b, c, q, h, p), g)  # b c q g r p
    a = (dt * A).reshape(b, c, q, g, h // g).transpose(0, 3, 4, 1, 2)  # b g r c q
    Bc, Cc = B.reshape(b, c, q, g, n), C.reshape(b, c, q, g, n)  # b c q g n
    a_cum = jnp.cumsum(a, axis=-1)  # b g r c q

    # 1. intra-chunk output (diagonal blocks): a masked, decayed "attention" C·Bᵀ
    L = jnp.exp(segsum(a))  # b g r c l s
    y_diag = jnp.einsum("bclgn,bcsgn,bgrcls,bcsgrp->bclgrp", Cc, Bc, L, X)
    # 2. each chunk's own state, decayed to the chunk's end
    decay_states = jnp.exp(a_cum[..., -1:] - a_cum)  # b g r c q
    states = jnp.einsum("bclgn,bgrcl,bclgrp->bcgrpn", Bc, decay_states, X)
    # 3. inter-chunk recurrence over chunk boundaries (a segsum over chunk totals)
    h0 = jnp.zeros((b, h, p, n), f32) if initial_state is None else initial_state.astype(f32)
    states = jnp.concatenate([h0.reshape(b, 1, g, h // g, p, n), states], axis=1)  # b c+1 g r p n
    chunk_total = jnp.pad(a_cum[..., -1], [(0, 0)] * 3 + [(1, 0)])  # b g r c+1
    decay_chunk = jnp.exp(segsum(chunk_total))  # b g r z c (z: to, c: from)
    new_states = jnp.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunk, states)
    states, final = new_states[:, :-1], new_states[:, -1]
    # 4. state at each chunk's start → output, decayed to each position
    y_off = jnp.einsum("bclgn,bcgrpn,bgrcl->bclgrp", Cc, states, jnp.exp(a_cum))
    y = (y_diag + y_off).reshape(b, c * q, h, p)[:, :l]
    if D is not None:
        y = y + D.astype(f32)[:, None] * x[:, :l]
    return y, final.reshape(b, h, p, n)


def ssd_step(state, x, dt, A, B, C, D=None):
    """One step of the recurrence (paper eq. 1 with A_t = exp(Δ_t·A)·I): → (y [b, h, p], state [b, h, p, n]).

    state [b, h, p, n], x [b, h, p], dt [b, h], A [h], B, C [b, g, n], D [h] or None:
        state ← exp(Δ·A) · state + Δ · x ⊗ B;     y = state · C + D · x
    (HF ``mamba2_selective_state_update`` / mamba_ssm ``selective_state_update``.)
    """
    f32 = jnp.float32
    state, x, dt, A, B, C = (v.astype(f32) for v in (state, x, dt, A, B, C))
    b, h, p, n = state.shape
    g = B.shape[1]
    decay = jnp.exp(dt * A)[..., None, None]  # b h 1 1
    xg = _grouped(x * dt[..., None], g)  # b g r p
    new = state * decay + jnp.einsum("bgrp,bgn->bgrpn", xg, B).reshape(b, h, p, n)
    y = jnp.einsum("bgrpn,bgn->bgrp", new.reshape(b, g, h // g, p, n), C).reshape(b, h, p)
    if D is not None:
        y = y + D.astype(f32)[:, None] * x
    return y, new


def ssd_sequential(x, dt, A, B, C, D=None, initial_state=None):
    """The recurrence run step by step (``lax.scan`` of :func:`ssd_step`): the reference for the chunked form.

    Same arguments and result as :func:`ssd_chunked` (no chunk size): (y [b, l, h, p], state [b, h, p, n]).
    """
    _check(x, dt, A, B, C)
    b, _, h, p = x.shape
    n = B.shape[-1]
    h0 = jnp.zeros((b, h, p, n), jnp.float32) if initial_state is None else initial_state.astype(jnp.float32)

    def step(state, inputs):
        x_t, dt_t, B_t, C_t = inputs
        y, state = ssd_step(state, x_t, dt_t, A, B_t, C_t, D)
        return state, y

    time_major = lambda v: jnp.moveaxis(v, 1, 0)
    final, ys = jax.lax.scan(step, h0, tuple(map(time_major, (x, dt, B, C))))
    return time_major(ys), final
