"""OneBit and PB-LLM weight quantizers vs numpy restatements of the papers / reference code.

OneBit: github.com/xuyuzhuang11/OneBit @ 42d6d7b, transformers/src/transformers/models/bitnet.py
(BitLinear) and scripts/build_start_ckpt.py. PB-LLM: github.com/hahnyuan/PB-LLM @ fe85da9,
quant/outlier_quantizer.py (BinaryXnorExceptOutliersLinear) and gptq_pb/high_quant.py. The
restatements follow the torch code's layout (weight (out, in) = kernelᵀ) to keep the orientation
honest.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant import weights as W


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def torch_sign(x):  # continuous test data has no zeros, so torch.sign == ±1 here
    assert (x != 0).all()
    return np.sign(x).astype(np.float32)


# ================================================================================== OneBit
def np_onebit_layer(x, weight, input_factor, weight_scale, bias=None, eps=1e-5):
    """Reference BitLinear.forward (bitnet.py l. 58–68), in numpy."""
    x = x * input_factor[None, :]
    out = x @ torch_sign(weight).T
    out = out * weight_scale[None, :]
    mu = out.mean(-1, keepdims=True)
    var = ((out - mu) ** 2).mean(-1, keepdims=True)  # torch LayerNorm: biased variance
    out = (out - mu) / np.sqrt(var + eps)             # elementwise_affine=False: no params
    return out if bias is None else out + bias


def np_rank1_nmf(a, iters=3000, seed=0):
    """Rank-1 Frobenius NMF of a ≥ 0 by exact alternating non-negative least squares
    (what sklearn's coordinate-descent NMF does for one component), random |N| init
    scaled by √mean(a) as sklearn's init='random'. Returns (w (m,), h (n,)) with a ≈ w hᵀ."""
    rng = np.random.default_rng(seed)
    avg = np.sqrt(a.mean())
    w, h = avg * np.abs(rng.standard_normal(a.shape[0])), avg * np.abs(rng.standard_normal(a.shape[1]))
    for _ in range(iters):
        w = np.maximum(a @ h / (h @ h), 0)
        h = np.maximum(a.T @ w / (w @ w), 0)
    return w, h


def test_onebit_layer_matches_reference_forward():
    n_in, n_out = 12, 7
    weight = rand((n_out, n_in), 1, 0.02)  # torch layout
    g, h = np.abs(rand((n_in,), 2)) + 0.1, np.abs(rand((n_out,), 3)) + 0.1
    bias = rand((n_out,), 4)
    x = rand((5, n_in), 5)
    kernel = jnp.asarray(weight.T)
    y = x @ np.asarray(W.onebit(kernel, jnp.asarray(g), jnp.asarray(h)))
    got = np.asarray(W.onebit_layernorm(jnp.asarray(y))) + bias
    np.testing.assert_allclose(got, np_onebit_layer(x, weight, g, h, bias), rtol=1e-4, atol=1e-5)
    # the value W̃ itself: g on the input axis, h on the output axis of the kernel
    np.testing.assert_allclose(np.asarray(W.onebit(kernel, jnp.asarray(g), jnp.asarray(h))),
                               (g[None, :] * torch_sign(weight) * h[:, None]).T, rtol=1e-6)


def test_onebit_layernorm_is_affine_free_torch_layernorm():
    y = rand((3, 4, 9), 6, 5.0) + 2.0
    mu = y.mean(-1, keepdims=True)
    ref = (y - mu) / np.sqrt(((y - mu) ** 2).mean(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.asarray(W.onebit_layernorm(jnp.asarray(y))), ref, rtol=1e-5, atol=1e-5)
    yb = jnp.asarray(y, jnp.bfloat16)
    assert W.onebit_layernorm(yb).dtype == jnp.bfloat16


def test_onebit_svid_init_is_the_rank1_factorisation_the_reference_nmf_finds():
    kernel = rand((16, 10), 7, 0.02)
    p = W.onebit_init(jnp.asarray(kernel))
    g, h = np.asarray(p["g"]), np.asarray(p["h"])
    assert g.shape == (16,) and h.shape == (10,)   # g: input side, h: output side
    assert (g >= 0).all() and (h >= 0).all()
    # build_start_ckpt.py: NMF on |weight| (out, in); W (out,1) → weight_scale (h), H (1,in) → input_factor (g)
    w_nmf, h_nmf = np_rank1_nmf(np.abs(kernel.T).astype(np.float64))
    np.testing.assert_allclose(np.outer(g, h), np.outer(h_nmf, w_nmf), rtol=1e-4, atol=1e-9)
    # the balanced split: ‖g‖ = ‖h‖ = √σ₁
    s1 = np.linalg.svd(np.abs(kernel), compute_uv=False)[0]
    np.testing.assert_allclose([np.linalg.norm(g), np.linalg.norm(h)], [np.sqrt(s1)] * 2, rtol=1e-5)
    with pytest.raises(ValueError, match="2-D"):
        W.onebit_init(jnp.ones((2, 3, 4)))


def test_onebit_latent_init_is_scaled_sign():
    kernel = rand((6, 5), 8)
    got = np.asarray(W.onebit_latent_init(jnp.asarray(kernel)))
    np.testing.assert_allclose(got, 0.01 * torch_sign(kernel), rtol=0, atol=0)
    np.testing.assert_array_equal(np.asarray(W.onebit_latent_init(jnp.zeros((2, 2)))), np.float32(0.01))  # sign(0)=+1


@pytest.mark.parametrize("scale", [0.01, 1.0])
def test_onebit_gradients_tanh_surrogate_and_exact_scales(scale):
    kernel = rand((9, 4), 9, scale)
    g, h = np.abs(rand((9,), 10)) + 0.1, np.abs(rand((4,), 11)) + 0.1
    c = rand((9, 4), 12)
    loss = lambda w, g, h: jnp.sum(W.onebit(w, g, h, rule="tanh") * c)
    gw, gg, gh = jax.grad(loss, argnums=(0, 1, 2))(*map(jnp.asarray, (kernel, g, h)))
    s = torch_sign(kernel)
    # SignSTEFunc.backward (bitnet.py l. 21–23): grad · (1.001 − tanh(w)²), then the g, h products
    np.testing.assert_allclose(np.asarray(gw), c * g[:, None] * h[None, :] * (1.001 - np.tanh(kernel) ** 2),
                               rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.asarray(gg), (c * s * h[None, :]).sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gh), (c * s * g[:, None]).sum(0), rtol=1e-5)
    # the bitjax rules act on u = W
    gw_id = jax.grad(lambda w: jnp.sum(W.onebit(w, jnp.asarray(g), jnp.asarray(h)) * c))(jnp.asarray(kernel))
    np.testing.assert_allclose(np.asarray(gw_id), c * g[:, None] * h[None, :], rtol=1e-6)


def test_onebit_keeps_dtype_and_jits():
    kernel = jnp.asarray(rand((8, 4), 13), jnp.bfloat16)
    p = W.onebit_init(kernel)
    out = jax.jit(lambda w: W.onebit(w, p["g"], p["h"], rule="tanh"))(kernel)
    assert out.dtype == jnp.bfloat16 and out.shape == (8, 4)
