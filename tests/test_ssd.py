"""SSD (bitjax.nn.ssd): chunked == sequential == a plain numpy loop of the recurrence, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.nn.ssd import segsum, ssd_chunked, ssd_sequential, ssd_step


def inputs(b=2, l=37, h=4, p=3, g=2, n=5, seed=0, initial=False):
    r = np.random.default_rng(seed)
    f = lambda *s: r.standard_normal(s).astype(np.float32)
    x, B, C = f(b, l, h, p), f(b, l, g, n), f(b, l, g, n)
    dt = np.log1p(np.exp(f(b, l, h) - 1.0)).astype(np.float32)  # softplus: Δ > 0
    A = -np.exp(r.uniform(np.log(0.5), np.log(4.0), h)).astype(np.float32)
    D = f(h)
    h0 = f(b, h, p, n) if initial else None
    return x, dt, A, B, C, D, h0


def numpy_recurrence(x, dt, A, B, C, D, h0):
    """h_t = exp(Δ_t·A)·h_{t−1} + Δ_t·x_t B_tᵀ,  y_t = h_t C_t + D x_t  (per head; head i uses group i // (h/g))."""
    b, l, h, p = x.shape
    g, n = B.shape[2:]
    x, dt, A, B, C, D = (np.asarray(v, np.float64) for v in (x, dt, A, B, C, D))
    state = np.zeros((b, h, p, n)) if h0 is None else np.asarray(h0, np.float64).copy()
    y = np.zeros_like(x)
    for t in range(l):
        for i in range(h):
            j = i // (h // g)
            state[:, i] = (
                np.exp(dt[:, t, i] * A[i])[:, None, None] * state[:, i]
                + dt[:, t, i, None, None] * x[:, t, i, :, None] * B[:, t, j, None, :]
            )
            y[:, t, i] = np.einsum("bpn,bn->bp", state[:, i], C[:, t, j]) + D[i] * x[:, t, i]
    return y, state


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def test_segsum_is_the_sum_over_the_segment():
    x = np.random.default_rng(0).standard_normal(6).astype(np.float32)
    s = np.asarray(segsum(jnp.asarray(x)))
    for i in range(6):
        for j in range(6):
            if j <= i:
                assert s[i, j] == pytest.approx(x[j + 1 : i + 1].sum(), abs=1e-6)
            else:
                assert s[i, j] == -np.inf


@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("initial", [False, True])
def test_sequential_matches_numpy_recurrence(g, initial):
    x, dt, A, B, C, D, h0 = inputs(g=g, l=11, initial=initial)
    y_ref, s_ref = numpy_recurrence(x, dt, A, B, C, D, h0)
    y, s = ssd_sequential(
        *map(jnp.asarray, (x, dt, A, B, C)), D=jnp.asarray(D), initial_state=None if h0 is None else jnp.asarray(h0)
    )
    assert rel_err(y, y_ref) < 1e-5 and rel_err(s, s_ref) < 1e-5


@pytest.mark.parametrize("chunk, l", [(1, 9), (8, 37), (16, 32), (64, 37), (5, 1)])
@pytest.mark.parametrize("g", [1, 2])
@pytest.mark.parametrize("initial", [False, True])
def test_chunked_matches_sequential_and_numpy(chunk, l, g, initial):
    x, dt, A, B, C, D, h0 = inputs(l=l, g=g, initial=initial, seed=chunk + l)
    args = tuple(map(jnp.asarray, (x, dt, A, B, C)))
    init = None if h0 is None else jnp.asarray(h0)
    y, s = jax.jit(ssd_chunked, static_argnums=5)(*args, chunk, jnp.asarray(D), init)
    y_seq, s_seq = ssd_sequential(*args, D=jnp.asarray(D), initial_state=init)
    assert y.shape == x.shape and s.shape == (x.shape[0], x.shape[2], x.shape[3], B.shape[3])
    assert rel_err(y, y_seq) < 1e-5 and rel_err(s, s_seq) < 1e-5
    y_np, s_np = numpy_recurrence(x, dt, A, B, C, D, h0)
    assert rel_err(y, y_np) < 1e-5 and rel_err(s, s_np) < 1e-5


def test_chunked_without_D_or_initial_state_and_state_carries_over():
    """Splitting a sequence and passing the first half's final state gives the whole sequence's outputs."""
    x, dt, A, B, C, _, _ = inputs(l=40)
    ssd = jax.jit(ssd_chunked, static_argnums=5)
    whole, s_whole = ssd(*map(jnp.asarray, (x, dt, A, B, C)), 8)
    first, s1 = ssd(
        *(jnp.asarray(v[:, :23]) for v in (x, dt)), jnp.asarray(A), *(jnp.asarray(v[:, :23]) for v in (B, C)), 8
    )
    second, s2 = ssd(
        *(jnp.asarray(v[:, 23:]) for v in (x, dt)),
        jnp.asarray(A),
        *(jnp.asarray(v[:, 23:]) for v in (B, C)),
        8,
        None,
        s1,
    )
    np.testing.assert_allclose(np.concatenate([first, second], 1), whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s2, s_whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("g", [1, 2])
def test_gradients_agree(g):
    x, dt, A, B, C, D, h0 = map(jnp.asarray, inputs(l=21, g=g, initial=True))
    w_y = jnp.asarray(np.random.default_rng(5).standard_normal(x.shape), jnp.float32)
    w_s = jnp.asarray(np.random.default_rng(6).standard_normal(h0.shape), jnp.float32)

    def loss(fn):
        def f(x, dt, A, B, C, D, h0):
            y, s = fn(x, dt, A, B, C, D, h0)
            return jnp.sum(y * w_y) + jnp.sum(s * w_s)

        return jax.jit(jax.grad(f, argnums=tuple(range(7))))

    g_chunk = loss(lambda *a: ssd_chunked(*a[:5], 8, D=a[5], initial_state=a[6]))(x, dt, A, B, C, D, h0)
    g_seq = loss(lambda *a: ssd_sequential(*a[:5], D=a[5], initial_state=a[6]))(x, dt, A, B, C, D, h0)
    for name, a, b in zip(("x", "dt", "A", "B", "C", "D", "h0"), g_chunk, g_seq):
        assert np.isfinite(np.asarray(a)).all(), name
        assert rel_err(a, b) < 1e-5, name


def test_step_by_step_decoding_matches_sequential():
    x, dt, A, B, C, D, h0 = map(jnp.asarray, inputs(l=9, g=2, initial=True))
    y_seq, s_seq = ssd_sequential(x, dt, A, B, C, D=D, initial_state=h0)
    state, ys = h0, []
    step = jax.jit(ssd_step)
    for t in range(x.shape[1]):
        y, state = step(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    assert rel_err(jnp.stack(ys, 1), y_seq) < 1e-6 and rel_err(state, s_seq) < 1e-6


def test_bad_shapes_are_refused():
    x, dt, A, B, C, _, _ = (None if v is None else jnp.asarray(v) for v in inputs(h=4, g=3))
    with pytest.raises(ValueError, match="g dividing h"):
        ssd_chunked(x, dt, A, B, C, 8)
