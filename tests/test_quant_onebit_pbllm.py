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
    out = (out - mu) / np.sqrt(var + eps)  # elementwise_affine=False: no params
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
    np.testing.assert_allclose(
        np.asarray(W.onebit(kernel, jnp.asarray(g), jnp.asarray(h))),
        (g[None, :] * torch_sign(weight) * h[:, None]).T,
        rtol=1e-6,
    )


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
    assert g.shape == (16,) and h.shape == (10,)  # g: input side, h: output side
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
    np.testing.assert_allclose(
        np.asarray(gw), c * g[:, None] * h[None, :] * (1.001 - np.tanh(kernel) ** 2), rtol=1e-5, atol=1e-8
    )
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


# ================================================================================== PB-LLM
def np_tails_mask(kernel, frac):
    """outlier_quantizer.py gen_outlier_mask l. 57–69 (torch.kthvalue is 1-based k-th smallest)."""
    flat = np.sort(kernel.ravel())
    n = flat.size
    lo = flat[int(n * frac / 2) - 1]
    hi = flat[int(n * (1 - frac / 2)) - 1]
    return (kernel < lo) | (kernel > hi)


def np_high_quant(weight, bits):
    """HighQuantizer(bits, perchannel=True, sym=False).calibrate + quantize (high_quant.py), torch layout."""
    maxq = 2**bits - 1
    xmin = np.minimum(weight.min(1), 0)
    xmax = np.maximum(weight.max(1), 0)
    zero_both = (xmin == 0) & (xmax == 0)
    xmin[zero_both], xmax[zero_both] = -1, 1
    scale = ((xmax - xmin) / maxq)[:, None]
    zero = np.round(-xmin[:, None] / scale)
    q = np.clip(np.round(weight / scale) + zero, 0, maxq)
    return scale * (q - zero)


def np_pb_llm(kernel, mask, salient):
    """binarize_except_outliers (l. 83–99) with frozen salient values: α one scalar over ~mask."""
    alpha = np.abs(kernel[~mask]).mean()
    return np.where(mask, salient, torch_sign(kernel) * alpha), alpha


@pytest.mark.parametrize("shape,frac", [((20, 10), 0.1), ((33, 7), 0.05), ((16, 16), 0.3)])
def test_salient_mask_tails_matches_reference(shape, frac):
    kernel = rand(shape, 20) + 0.3  # skewed: tails ≠ top-|W|
    got = np.asarray(W.salient_mask(jnp.asarray(kernel), frac, "tails"))
    ref = np_tails_mask(kernel, frac)
    np.testing.assert_array_equal(got, ref)
    n = kernel.size
    assert got.sum() == int(n * frac / 2) - 1 + n - int(n * (1 - frac / 2))


def test_salient_mask_magnitude_and_stacking():
    kernel = rand((20, 5), 21)
    k = int(np.ceil(0.1 * kernel.size))
    ref = np.abs(kernel) >= np.sort(np.abs(kernel).ravel())[::-1][k - 1]
    np.testing.assert_array_equal(np.asarray(W.salient_mask(jnp.asarray(kernel), 0.1)), ref)
    assert ref.sum() == k
    stack = rand((3, 12, 6), 22)
    for crit in ("magnitude", "tails"):
        got = np.asarray(W.salient_mask(jnp.asarray(stack), 0.2, crit))
        for i in range(3):  # leading axes are independent matrices
            np.testing.assert_array_equal(got[i], np.asarray(W.salient_mask(jnp.asarray(stack[i]), 0.2, crit)))
    assert not np.asarray(W.salient_mask(jnp.asarray(kernel), 0.0, "tails")).any()
    with pytest.raises(ValueError, match="criterion"):
        W.salient_mask(jnp.asarray(kernel), 0.1, "hessian")


@pytest.mark.parametrize("bits", [8, 4])
def test_pb_llm_high_is_reference_per_channel_asymmetric_grid(bits):
    kernel = rand((24, 6), 23, 0.05)
    kernel[:, 2] = np.abs(kernel[:, 2])  # a channel with min > 0: the grid still spans 0
    kernel[:, 3] = 0.0  # all-zero channel → range [−1, 1]
    got = np.asarray(W.pb_llm_high(jnp.asarray(kernel), bits))
    np.testing.assert_allclose(got, np_high_quant(kernel.T.copy(), bits).T, rtol=1e-6, atol=1e-8)
    assert max(len(np.unique(got[:, j])) for j in range(6)) <= 2**bits


def test_pb_llm_forward_matches_reference_and_state_is_frozen():
    kernel = rand((32, 12), 24, 0.02) + 0.004
    st = W.pb_llm_init(jnp.asarray(kernel), salient_frac=0.1, salient_bits=8)
    mask, sal = np.asarray(st["mask"]), np.asarray(st["salient"])
    np.testing.assert_array_equal(mask, np_tails_mask(kernel, 0.1))
    np.testing.assert_allclose(sal, np.where(mask, np_high_quant(kernel.T.copy(), 8).T, 0), rtol=1e-6, atol=1e-9)
    got = np.asarray(W.pb_llm(jnp.asarray(kernel), st["mask"], st["salient"]))
    ref, alpha = np_pb_llm(kernel, mask, sal)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    assert np.allclose(np.unique(np.abs(got[~mask])), alpha)  # one α per matrix
    # "training" moved W: salient entries and mask stay, α follows the new W
    moved = kernel + rand(kernel.shape, 25, 0.01)
    got2 = np.asarray(W.pb_llm(jnp.asarray(moved), st["mask"], st["salient"]))
    np.testing.assert_allclose(got2, np_pb_llm(moved, mask, sal)[0], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(got2[mask], sal[mask])
    # stateless fallback = init from the current W + apply
    np.testing.assert_allclose(np.asarray(W.pb_llm(jnp.asarray(kernel), salient_frac=0.1)), got, rtol=1e-6)


@pytest.mark.parametrize("rule", ["identity", "clipped"])
def test_pb_llm_gradient_zero_on_frozen_salient_ste_times_alpha_elsewhere(rule):
    kernel = rand((20, 8), 26, 0.02)
    st = W.pb_llm_init(jnp.asarray(kernel), 0.1)
    mask = np.asarray(st["mask"])
    c = rand(kernel.shape, 27)
    gw = np.asarray(
        jax.grad(lambda w: jnp.sum(W.pb_llm(w, st["mask"], st["salient"], rule=rule) * c))(jnp.asarray(kernel))
    )
    alpha = np.abs(kernel[~mask]).mean()
    # reference: STEBinary passes the gradient through sign, × the detached binary_scale α;
    # the detached salient branch of torch.where gives 0
    r = np.ones_like(kernel) if rule == "identity" else (np.abs(kernel / alpha) <= 1).astype(np.float32)
    np.testing.assert_allclose(gw, np.where(mask, 0.0, c * alpha * r), rtol=1e-5, atol=1e-9)
    assert (gw[mask] == 0).all() and (gw[~mask] != 0).any()


def test_pb_llm_bf16_jit_and_shape_checks():
    kernel = jnp.asarray(rand((16, 8), 28, 0.02), jnp.bfloat16)
    st = W.pb_llm_init(kernel)
    out = jax.jit(W.pb_llm)(kernel, st["mask"], st["salient"])
    assert out.dtype == jnp.bfloat16 and out.shape == (16, 8)
    with pytest.raises(ValueError, match="shape"):
        W.pb_llm(kernel, st["mask"][:8], st["salient"][:8])
