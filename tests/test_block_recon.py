"""Block reconstruction (bitjax.quant.block_recon) and the block-wise PTQ methods on it: OmniQuant's LWC
and EfficientQAT's Block-AP against torch restatements of their references' quantizers (values and
gradients through the STEs), one AdamW step of the block loss against HF's torch LlamaDecoderLayer, the
standalone block forward against the model's own (loop and scan layouts), and `python -m bitjax.ptq
--method omniquant|efficientqat` end to end on a tiny run."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from builders import FILES, reload_eval_loss
from flax import nnx
from test_ptq import fp_run, kernels  # noqa: F401  (the tiny FP run fixture, built once per module)

from bitjax import ptq
from bitjax.export import hf as hf_lib
from bitjax.models import transformer
from bitjax.nn import layer_stack
from bitjax.quant import block_recon, efficientqat, omniquant
from bitjax.run import plan as plan_lib

CALIB = 8


# ------------------------------------------------------------------ torch restatements of the references
def torch_round_ste(x):
    return (x.round() - x).detach() + x


def torch_lwc(weight, up, low, bits, group_size):
    """OpenGVLab/OmniQuant quantize/quantizer.py, lwc, asymmetric: weight (out, in) torch; up/low (rows, 1)."""
    x = weight.reshape(-1, group_size) if group_size else weight
    xmax = torch.sigmoid(up) * x.amax(-1, keepdim=True)
    xmin = torch.sigmoid(low) * x.amin(-1, keepdim=True)
    scale = ((xmax - xmin) / (2**bits - 1)).clamp(min=1e-5, max=1e4)
    zero = (-xmin / scale).clamp(min=-1e4, max=1e4).round()
    q = (torch_round_ste(x / scale) + zero).clamp(0, 2**bits - 1)
    return ((q - zero) * scale).reshape(weight.shape)


def torch_clamp_ste(x, lo, hi):
    return (x.clamp(lo, hi) - x).detach() + x


def torch_blockap(weight, scale, zero_point, bits, group_size):
    """OpenGVLab/EfficientQAT quantize/quantizer.py UniformAffineQuantizer.fake_quant: weight (out, in)."""
    s = torch_clamp_ste(scale, 1e-4, 1e4)
    z = torch_clamp_ste(torch_round_ste(zero_point), 0, 2**bits - 1)
    x = weight.reshape(-1, group_size)
    q = (torch_round_ste(x / s) + z).clamp(0, 2**bits - 1)
    return ((q - z) * s).reshape(weight.shape)


def torch_blockap_init(weight, bits, group_size):
    x = weight.reshape(-1, group_size)
    scale = ((x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / (2**bits - 1)).clamp(min=1e-4, max=1e4)
    return scale, (-(x.amin(-1, keepdim=True) / scale).clamp(min=-1e4, max=1e4)).round()


def rows_to_ours(t, d_out, group_size, d_in):
    """The reference's (out·G, 1) per-row parameter → ours (G, out)."""
    g = d_in // (group_size or d_in)
    return jnp.asarray(t.detach().numpy().reshape(d_out, g).T)


# ------------------------------------------------------------------ the quantizers
@pytest.mark.parametrize("bits, group_size", [(2, None), (3, 8), (4, 16)])
def test_lwc_fake_quant_and_its_gradient_match_the_reference(bits, group_size):
    rng = np.random.default_rng(0)
    d_in, d_out = 32, 6
    w = rng.normal(size=(d_in, d_out)).astype(np.float32)
    rows = d_out * (d_in // (group_size or d_in))
    up = torch.tensor(rng.normal(2.0, 1.0, (rows, 1)).astype(np.float32), requires_grad=True)
    low = torch.tensor(rng.normal(2.0, 1.0, (rows, 1)).astype(np.float32), requires_grad=True)
    r = rng.normal(size=(d_in, d_out)).astype(np.float32)  # a random cotangent
    ref = torch_lwc(torch.tensor(w.T), up, low, bits, group_size)
    (ref * torch.tensor(r.T)).sum().backward()

    gamma, beta = rows_to_ours(up, d_out, group_size, d_in), rows_to_ours(low, d_out, group_size, d_in)
    got = omniquant.lwc_fake_quant(jnp.asarray(w), gamma, beta, bits, group_size)
    np.testing.assert_allclose(np.asarray(got), ref.detach().numpy().T, rtol=1e-5, atol=1e-6)
    g_gamma, g_beta = jax.grad(
        lambda g, b: jnp.sum(omniquant.lwc_fake_quant(jnp.asarray(w), g, b, bits, group_size) * r), argnums=(0, 1)
    )(gamma, beta)
    np.testing.assert_allclose(
        np.asarray(g_gamma), rows_to_ours(up.grad, d_out, group_size, d_in), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(g_beta), rows_to_ours(low.grad, d_out, group_size, d_in), rtol=1e-4, atol=1e-6
    )
    assert np.abs(np.asarray(g_gamma)).sum() > 0  # the STE passes a gradient to the clipping


@pytest.mark.parametrize("bits, group_size", [(2, 32), (3, 8), (4, 16)])
def test_blockap_init_fake_quant_and_gradients_match_the_reference(bits, group_size):
    rng = np.random.default_rng(1)
    d_in, d_out = 32, 6
    w = rng.normal(size=(d_in, d_out)).astype(np.float32)
    tw = torch.tensor(w.T.copy(), requires_grad=True)
    s0, z0 = torch_blockap_init(tw.detach(), bits, group_size)
    s, z = init = efficientqat.init_scale_zero(jnp.asarray(w), bits, group_size)
    np.testing.assert_allclose(np.asarray(s), rows_to_ours(s0, d_out, group_size, d_in), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(z), rows_to_ours(z0, d_out, group_size, d_in))
    # perturbed s and z (as after training: z off the integers), then values and gradients of all three
    s1 = (s0 * torch.tensor(rng.uniform(0.7, 1.3, s0.shape).astype(np.float32))).requires_grad_(True)
    z1 = (z0 + torch.tensor(rng.uniform(-0.4, 0.4, z0.shape).astype(np.float32))).requires_grad_(True)
    r = rng.normal(size=(d_in, d_out)).astype(np.float32)
    ref = torch_blockap(tw, s1, z1, bits, group_size)
    (ref * torch.tensor(r.T)).sum().backward()
    ours_s, ours_z = rows_to_ours(s1, d_out, group_size, d_in), rows_to_ours(z1, d_out, group_size, d_in)
    f = lambda w_, s_, z_: efficientqat.fake_quant(w_, s_, z_, bits, group_size)
    np.testing.assert_allclose(
        np.asarray(f(jnp.asarray(w), ours_s, ours_z)), ref.detach().numpy().T, rtol=1e-5, atol=1e-6
    )
    gw, gs, gz = jax.grad(lambda *a: jnp.sum(f(*a) * r), argnums=(0, 1, 2))(jnp.asarray(w), ours_s, ours_z)
    np.testing.assert_allclose(np.asarray(gw), tw.grad.numpy().T, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(gs), rows_to_ours(s1.grad, d_out, group_size, d_in), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gz), rows_to_ours(z1.grad, d_out, group_size, d_in), rtol=1e-4, atol=1e-5)
    assert init[0].shape == (d_in // group_size, d_out)


# ------------------------------------------------------------------ the harness
def tiny_model(scan: bool) -> transformer.Transformer:
    cfg = transformer.default_config()
    cfg.update(dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_dim=48, scan_layers=scan))
    return transformer.Transformer(cfg, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("scan", [False, True])
def test_block_forward_chained_is_the_models_forward(scan):
    model = tiny_model(scan)
    tokens = jax.random.randint(jax.random.key(0), (2, 12), 0, 61)
    loop = layer_stack.unstack_layers(model)
    cos, sin = transformer.rope_cos_sin(jnp.arange(12), model.head_dim, model.rope_theta)
    x = loop.embed_tokens(tokens)
    for layer in loop.layers:
        graphdef, state = nnx.split(layer)
        x = block_recon.block_forward(graphdef, nnx.to_pure_dict(state), x, cos, sin)
    logits = loop.lm_head(loop.norm(x))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(tokens)), rtol=2e-5, atol=2e-5)


def causal_mask(n):
    return torch.triu(torch.full((n, n), float("-inf")), 1)[None, None]


def test_one_omniquant_step_matches_adamw_on_hfs_llama_block():
    """One AdamW step (lr 1e-2, wd 0) of mean‖block_fp(x_fp) − block_lwc(x_q)‖² on HF's torch
    LlamaDecoderLayer with the reference's LWC on every projection, vs the harness's train_step."""
    model = tiny_model(False)
    cfg = transformer.default_config()
    cfg.update(dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_dim=48))
    hf = hf_lib.to_hf_model(model, cfg)
    layer_t = hf.model.layers[0]
    bits, group_size, n, length = 2, 16, 2, 10
    rng = np.random.default_rng(2)
    x_fp = rng.normal(size=(n, length, 32)).astype(np.float32)
    x_q = (x_fp + 0.1 * rng.normal(size=x_fp.shape)).astype(np.float32)

    # torch: the reference's loop body for one mini-batch
    pos = torch.arange(length)[None]
    emb = hf.model.rotary_emb(torch.tensor(x_fp), pos)
    with torch.no_grad():
        y_fp = layer_t(torch.tensor(x_fp), attention_mask=causal_mask(length), position_embeddings=emb)
    linears = {("self_attn", k): getattr(layer_t.self_attn, k) for k in ("q_proj", "k_proj", "v_proj", "o_proj")} | {
        ("mlp", k): getattr(layer_t.mlp, k) for k in ("gate_proj", "up_proj", "down_proj")
    }
    fp_w = {k: m.weight.detach().clone() for k, m in linears.items()}
    lwc = {}
    for k, w in fp_w.items():
        rows = w.shape[0] * (w.shape[1] // group_size)
        lwc[k] = (torch.full((rows, 1), 4.0, requires_grad=True), torch.full((rows, 1), 4.0, requires_grad=True))
    opt = torch.optim.AdamW([p for pair in lwc.values() for p in pair], lr=1e-2, weight_decay=0.0)
    for k, m in linears.items():
        del m.weight
        m.weight = torch_lwc(fp_w[k], *lwc[k], bits, group_size)
    out = layer_t(torch.tensor(x_q), attention_mask=causal_mask(length), position_embeddings=emb)
    loss_t = torch.nn.functional.mse_loss(out, y_fp)
    opt.zero_grad()
    loss_t.backward()
    opt.step()

    # ours
    layer = model.layers[0]
    graphdef, state = nnx.split(layer)
    params = nnx.to_pure_dict(state)
    cos, sin = transformer.rope_cos_sin(jnp.arange(length), model.head_dim, model.rope_theta)
    y = block_recon.block_forward(graphdef, params, jnp.asarray(x_fp), cos, sin)
    np.testing.assert_allclose(np.asarray(y), y_fp.numpy(), rtol=1e-4, atol=1e-5)
    theta = omniquant.init(params, bits, group_size, layer)
    tx = omniquant.optimizer(theta, 1, bits)
    step = block_recon.train_step(tx, graphdef, omniquant.METHOD, bits, group_size)
    theta, _, loss = step(theta, tx.init(theta), params, jnp.asarray(x_q), (y,), cos, sin)
    assert float(loss) == pytest.approx(loss_t.item(), rel=1e-4)
    for (block, name), (up, low) in lwc.items():
        d_out, d_in = fp_w[(block, name)].shape
        np.testing.assert_allclose(
            np.asarray(theta[block][name]["gamma"]), rows_to_ours(up, d_out, group_size, d_in), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            np.asarray(theta[block][name]["beta"]), rows_to_ours(low, d_out, group_size, d_in), rtol=1e-5, atol=1e-6
        )
    assert any(not np.allclose(np.asarray(theta[b][k]["gamma"]), 4.0) for b, k in lwc)  # the step moved the clipping


def test_one_blockap_step_matches_clipped_adamw_on_hfs_llama_block():
    """One Block-AP step on HF's torch LlamaDecoderLayer, the reference's way: every weight (projections and
    norms) and each projection's (s, z) trained, torch.nn.utils.clip_grad_norm_(0.3), AdamW wd 0 with lr
    1e-5 for the weights and 1e-4 for s, z (W3) — vs the harness's train_step with efficientqat's optimizer."""
    model = tiny_model(False)
    cfg = transformer.default_config()
    cfg.update(dict(vocab_size=61, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_dim=48))
    layer_t = hf_lib.to_hf_model(model, cfg).model.layers[1]
    hf_rotary = hf_lib.to_hf_model(model, cfg).model.rotary_emb
    bits, group_size, n, length = 3, 16, 2, 10
    rng = np.random.default_rng(4)
    x_fp = rng.normal(size=(n, length, 32)).astype(np.float32)
    x_q = (x_fp + 0.1 * rng.normal(size=x_fp.shape)).astype(np.float32)
    emb = hf_rotary(torch.tensor(x_fp), torch.arange(length)[None])
    with torch.no_grad():
        y_fp = layer_t(torch.tensor(x_fp), attention_mask=causal_mask(length), position_embeddings=emb)
    linears = {("self_attn", k): getattr(layer_t.self_attn, k) for k in ("q_proj", "k_proj", "v_proj", "o_proj")} | {
        ("mlp", k): getattr(layer_t.mlp, k) for k in ("gate_proj", "up_proj", "down_proj")
    }
    weights = {k: torch.nn.Parameter(m.weight.detach().clone()) for k, m in linears.items()}
    sz = {
        k: tuple(torch.nn.Parameter(t) for t in torch_blockap_init(w.detach(), bits, group_size))
        for k, w in weights.items()
    }
    norms = [layer_t.input_layernorm.weight, layer_t.post_attention_layernorm.weight]
    norms0 = [p.detach().clone() for p in norms]
    opt = torch.optim.AdamW(
        [
            {"params": [p for pair in sz.values() for p in pair], "lr": 1e-4},
            {"params": [*weights.values(), *norms], "lr": 1e-5},
        ],
        weight_decay=0.0,
    )
    for k, m in linears.items():
        del m.weight
        m.weight = torch_blockap(weights[k], *sz[k], bits, group_size)
    loss_t = torch.nn.functional.mse_loss(
        layer_t(torch.tensor(x_q), attention_mask=causal_mask(length), position_embeddings=emb), y_fp
    )
    opt.zero_grad()
    loss_t.backward()
    torch.nn.utils.clip_grad_norm_([*weights.values(), *norms, *(p for pair in sz.values() for p in pair)], 0.3)
    opt.step()

    layer = model.layers[1]
    graphdef, state = nnx.split(layer)
    params = nnx.to_pure_dict(state)
    cos, sin = transformer.rope_cos_sin(jnp.arange(length), model.head_dim, model.rope_theta)
    y = block_recon.block_forward(graphdef, params, jnp.asarray(x_fp), cos, sin)
    theta0 = efficientqat.init(params, bits, group_size, layer)
    tx = efficientqat.optimizer(theta0, 1, bits)
    step = block_recon.train_step(tx, graphdef, efficientqat.METHOD, bits, group_size)
    theta, _, loss = step(theta0, tx.init(theta0), params, jnp.asarray(x_q), (y,), cos, sin)
    assert float(loss) == pytest.approx(loss_t.item(), rel=1e-4)
    moved = lambda new, old, ref_new, ref_old, lr: np.testing.assert_allclose(
        np.asarray(new) - np.asarray(old), ref_new - ref_old, atol=lr * 1e-2
    )
    for (block, name), w in weights.items():
        d_out, d_in = w.shape
        k0 = np.asarray(params[block][name]["kernel"])
        moved(theta["params"][block][name]["kernel"], k0, w.detach().numpy().T, k0, 1e-5)
        s_t, z_t = sz[(block, name)]
        s_ref0, z_ref0 = torch_blockap_init(torch.tensor(k0.T), bits, group_size)
        moved(
            theta["s"][block][name],
            theta0["s"][block][name],
            rows_to_ours(s_t, d_out, group_size, d_in),
            rows_to_ours(s_ref0, d_out, group_size, d_in),
            1e-4,
        )
        moved(
            theta["z"][block][name],
            theta0["z"][block][name],
            rows_to_ours(z_t, d_out, group_size, d_in),
            rows_to_ours(z_ref0, d_out, group_size, d_in),
            1e-4,
        )
    for key, p_t, p0 in zip(("input_layernorm", "post_attention_layernorm"), norms, norms0):
        moved(theta["params"][key]["scale"], params[key]["scale"], p_t.detach().numpy(), p0.numpy(), 1e-5)
    assert not np.allclose(np.asarray(theta["s"]["mlp"]["down_proj"]), np.asarray(theta0["s"]["mlp"]["down_proj"]))


@pytest.mark.parametrize("aug_loss", [False, True])
def test_reconstruct_trains_each_block_on_the_quantized_chain(aug_loss):
    """The harness's chain: block i's inputs are the quantized outputs of blocks < i; its target is the FP
    chain (with aug_loss also the FP block on the quantized input); each block's loss drops from its
    initialisation; the kernels written lie on a 2-bit grid."""
    model = tiny_model(False)
    fp = nnx.clone(model)
    tokens = jax.random.randint(jax.random.key(1), (4, 12), 0, 61)
    cos, sin = transformer.rope_cos_sin(jnp.arange(12), model.head_dim, model.rope_theta)
    x = model.embed_tokens(tokens)
    losses = block_recon.reconstruct(
        model.layers, x, cos, sin, omniquant.METHOD, 2, None, 3, 2, aug_loss, log=lambda _: None
    )
    assert list(losses) == ["layers.0", "layers.1", "layers.2"]
    x_fp = x_q = x
    for i, (lq, lf) in enumerate(zip(model.layers, fp.layers)):
        y_fp, y_q = np.asarray(lf(x_fp, cos, sin)[0]), np.asarray(lq(x_q, cos, sin)[0])
        # the final loss is the written W̃'s loss: quantized block on the quantized chain vs the FP chain
        want = np.mean((y_q - y_fp) ** 2) + (np.mean((y_q - np.asarray(lf(x_q, cos, sin)[0])) ** 2) if aug_loss else 0)
        assert losses[f"layers.{i}"]["final"] == pytest.approx(float(want), rel=1e-4)
        assert losses[f"layers.{i}"]["final"] < losses[f"layers.{i}"]["init"]
        x_fp, x_q = y_fp, y_q
        for _, _, k in block_recon.kernels(nnx.to_pure_dict(nnx.state(lq))):
            assert max(len(np.unique(np.asarray(k)[:, o])) for o in range(k.shape[1])) <= 4


@pytest.mark.parametrize("sub_norm", [False, True])
def test_let_is_an_equivalent_transformation(sub_norm):
    """LET's scales folded into the FP block leave its function unchanged (paper Eq. 4–5: X W = (X/s)(sW));
    GQA (4 query heads on 2 KV heads) and RoPE included; scales of both signs, one truncated to 1e-2."""
    cfg = transformer.default_config()
    cfg.update(dict(vocab_size=61, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, mlp_dim=48, sub_norm=sub_norm))
    layer = transformer.Transformer(cfg, rngs=nnx.Rngs(5)).layers[0]
    graphdef, state = nnx.split(layer)
    params = nnx.to_pure_dict(state)
    theta = omniquant.let_init(params, 2, None, layer)
    assert ("out" in theta["let"]) is not sub_norm  # no v→o pair across attn_sub_norm
    keys = iter(jax.random.split(jax.random.key(7), 8))
    let = {
        k: jax.random.uniform(next(keys), v.shape, minval=0.3, maxval=3.0)
        * jnp.where(jax.random.bernoulli(next(keys), 0.2, v.shape), -1.0, 1.0)
        for k, v in theta["let"].items()
    }
    let["qkv"] = let["qkv"].at[0].set(1e-4)  # truncated to 1e-2 on both sides alike
    x = jax.random.normal(jax.random.key(8), (2, 10, 32))
    cos, sin = transformer.rope_cos_sin(jnp.arange(10), layer.self_attn.head_dim, 10000.0)
    moved = omniquant.let_transform(params, let)
    want = np.asarray(layer(x, cos, sin)[0])
    np.testing.assert_allclose(np.asarray(block_recon.block_forward(graphdef, moved, x, cos, sin)), want, atol=3e-5)
    assert not np.allclose(np.asarray(moved["self_attn"]["q_proj"]["kernel"]), params["self_attn"]["q_proj"]["kernel"])
    # at its initialisation (s = 1) LWC + LET is LWC alone
    lwc_only, with_let = omniquant.apply(theta["lwc"], params, 2, None), omniquant.let_apply(theta, params, 2, None)
    for a, b in zip(jax.tree.leaves(lwc_only), jax.tree.leaves(with_let)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def outs(fp_run, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("block")
    return {
        name: (str(root / name), ptq.run(fp_run, method, 2, str(root / name), calib_sequences=CALIB, epochs=epochs))
        for name, method, epochs in (("omniquant2", "omniquant", 2), ("efficientqat2", "efficientqat", 1))
    }


@pytest.mark.parametrize("name", ["omniquant2", "efficientqat2"])
def test_block_methods_write_a_run_on_the_grid_that_loads_and_evaluates(outs, fp_run, name):  # noqa: F811
    out, _result = outs[name]
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert saved["method"] == name[:-1] and saved["bits"] == 2 and saved["calib_sequences"] == CALIB
    assert saved["epochs"] == (2 if name == "omniquant2" else 1) and saved["batch_size"] in (1, 2)
    assert set(saved["block_errors"]) == {"layers.0", "layers.1"} and "layer_errors" not in saved
    assert all(0 < e["final"] < 1e3 for e in saved["block_errors"].values())
    assert math.isfinite(saved["eval_bpb"]) and saved["eval_bpb"] > 0
    plan, params, loss = reload_eval_loss(out)
    assert plan.config.model.quant.method == "fp"
    assert loss == pytest.approx(saved["eval_loss"], rel=1e-5)
    _, fp_params = plan_lib.restore_one_device(fp_run)
    for (path, q), (_, w) in zip(kernels(params), kernels(fp_params)):
        assert not np.array_equal(q, w), path
        assert max(len(np.unique(q[:, o])) for o in range(q.shape[1])) <= 4, path  # 2 bits per channel
    for a, b in zip(jax.tree.leaves(params["embed_tokens"]), jax.tree.leaves(fp_params["embed_tokens"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_omniquant_on_calib_text_through_the_cli(fp_run, tmp_path, capsys):  # noqa: F811
    out = str(tmp_path / "omni_text")
    ptq.main(
        ["--workdir", fp_run, "--method", "omniquant3", "--group_size", "16", "--calib_text", FILES[0]]
        + ["--calib_sequences", "4", "--epochs", "1", "--batch_size", "2", "--aug_loss", "--out", out]
    )
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert saved["bits"] == 3 and saved["group_size"] == 16 and saved["calib_data"] == [FILES[0]]
    assert saved["batch_size"] == 2 and saved["aug_loss"] is True and math.isfinite(saved["eval_bpb"])


@pytest.mark.slow  # ~20 s alone on 2 cores (compiles the LET block)
def test_omniquant_let_writes_a_run_on_the_grid(fp_run, tmp_path):  # noqa: F811
    out = str(tmp_path / "omni_let")
    result = ptq.run(fp_run, "omniquant", 2, out, calib_sequences=4, epochs=1, let=True)
    assert result["let"] is True and all(math.isfinite(e["final"]) for e in result["block_errors"].values())
    _, params = plan_lib.restore_one_device(out)
    _, fp_params = plan_lib.restore_one_device(fp_run)
    for path, q in kernels(params):
        assert max(len(np.unique(q[:, o])) for o in range(q.shape[1])) <= 4, path
    # the norms carry LET's 1/s: changed, unlike under LWC alone
    assert not np.array_equal(
        np.asarray(params["layers"][0]["input_layernorm"]["scale"]),
        np.asarray(fp_params["layers"][0]["input_layernorm"]["scale"]),
    )


@pytest.mark.slow  # trains its own scan_layers run
def test_omniquant_on_a_scan_layers_run_writes_the_stacked_layout(data_dir, tmp_path):
    from builders import tiny_config

    from bitjax.train import trainer

    wd, out = str(tmp_path / "fp_scan"), str(tmp_path / "omni_scan")
    trainer.train(tiny_config("fp", steps=6, data_dir=data_dir, **{"model.scan_layers": True}), wd)
    result = ptq.run(wd, "omniquant", 3, out, calib_sequences=2, epochs=1)
    plan, params, loss = reload_eval_loss(out)
    assert plan.config.model.scan_layers and params["layers"]["self_attn"]["q_proj"]["kernel"].shape[0] == 2
    assert loss == pytest.approx(result["eval_loss"], rel=1e-5)
    q = np.asarray(params["layers"]["mlp"]["down_proj"]["kernel"][1])
    assert max(len(np.unique(q[:, o])) for o in range(q.shape[1])) <= 8  # 3 bits per channel


@pytest.mark.parametrize(
    "args, match",
    [
        (["--method", "rtn", "--epochs", "2"], "--epochs: rtn is layer-wise"),
        (["--method", "gptq", "--batch_size", "2"], "--batch_size: gptq is layer-wise"),
        (["--method", "billm", "--aug_loss"], "--aug_loss: billm is layer-wise"),
        (["--method", "efficientqat", "--let"], "--let: efficientqat has no LET"),
        (["--method", "omniquant", "--epochs", "-1"], "--epochs -1"),
        (["--method", "efficientqat", "--batch_size", "9", "--calib_sequences", "8"], "--batch_size 9"),
        (["--method", "omniquant", "--bits", "1"], "--bits 1"),
        (["--method", "efficientqat", "--group_size", "5"], "--group_size 5"),
    ],
)
def test_bad_block_arguments_are_one_line_and_write_nothing(fp_run, tmp_path, capsys, args, match):  # noqa: F811
    with pytest.raises(SystemExit) as e:
        ptq.main(["--workdir", fp_run, "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
