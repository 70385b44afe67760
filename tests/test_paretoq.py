"""ParetoQ's weight quantizers against a numpy restatement of the reference (facebookresearch/ParetoQ
models/utils_quant.py: StretchedElasticQuant, LsqBinaryTernaryExtension; train.py: the α init), written on
torch's (out, in) weight layout; bitjax's kernel is its transpose. Forward, both gradients, the init, and
QAT from an fp run through config.init_from (α from the fp kernels)."""

import importlib.util
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bitjax.quant import paretoq as P
from bitjax.quant.registry import QuantSpec

CLIP = 0.99
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ref_init(w, bits):  # w: torch layout (out, in); one α per row
    a = np.abs(w)
    if bits == 1:
        return a.mean(-1)
    if bits in (1.58, 2):
        return a.max(-1)
    return a.max(-1) / (2 ** (bits - 1) - 1)


def ref_forward_backward(w, alpha, g, bits):
    """(W̃, dL/dW, dL/dα) of the reference for upstream gradient g, all (out, in) / (out,)."""
    al = np.maximum(alpha, 1e-5)[:, None]
    u = w / al
    numel = w.size
    if bits == 1:
        q = np.where(w >= 0, 1.0, -1.0)  # bitjax's sign(0) = +1 (torch's is 0; no exact zeros drawn here)
        lo, hi = -1.0, 1.0
        inside = (u >= lo) & (u <= hi)
        da = (q * g).sum(-1) / math.sqrt(numel)
        return q * al, inside * g, da
    if bits in (1.58, 2):
        n, shift = (1.5, 0.0) if bits == 1.58 else (2.0, 0.5)
        qu = (np.round(np.clip(u, -CLIP, CLIP) * n - shift) + shift) / n
        top = (n - shift) / n
        small, big = u < -CLIP, u > CLIP
        mid = ~(small | big)
        da = ((small * -top + big * top + mid * (qu - u)) * g).sum(-1) / math.sqrt(numel * 1)
        return qu * al, mid * g, da
    qn, qp = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    qu = np.clip(np.round(u), qn, qp)
    small, big = u < qn, u > qp
    mid = ~(small | big)
    da = ((small * qn + big * qp + mid * (np.round(u) - u)) * g).sum(-1) / math.sqrt(numel * qp)
    return qu * al, mid * g, da


@pytest.mark.parametrize("bits", P.BITS)
def test_forward_gradients_and_init_match_the_reference(bits):
    rng = np.random.default_rng(int(bits * 100))
    w = rng.normal(size=(24, 40)).astype(np.float32) * 0.05  # torch (out, in)
    alpha0 = ref_init(w, bits)
    got0 = np.asarray(P.paretoq_init(jnp.asarray(w.T), bits)["alpha"])
    np.testing.assert_allclose(got0, alpha0, rtol=1e-6)
    # a trained α: smaller than the init for some rows, so values fall outside the clip range too
    alpha = (alpha0 * rng.uniform(0.3, 1.2, size=alpha0.shape)).astype(np.float32)
    g = rng.normal(size=w.shape).astype(np.float32)
    ref_q, ref_dw, ref_da = ref_forward_backward(w.astype(np.float64), alpha.astype(np.float64), g, bits)
    q, vjp = jax.vjp(lambda k, a: P.paretoq(k, a, bits), jnp.asarray(w.T), jnp.asarray(alpha))
    dk, da = vjp(jnp.asarray(g.T))
    np.testing.assert_allclose(np.asarray(q).T, ref_q, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(dk).T, ref_dw, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(da), ref_da, rtol=1e-4, atol=1e-6)
    # the levels: 2 at 1 bit, {−⅔, 0, ⅔} at 1.58, {±¼, ±¾} at 2, ≤ 2^k integers at 3/4 (per row, times α)
    levels = {round(float(v), 4) for v in np.unique(np.asarray(q).T / np.maximum(alpha, 1e-5)[:, None])}
    expect = {1: {-1.0, 1.0}, 1.58: {-0.6667, 0.0, 0.6667}, 2: {-0.75, -0.25, 0.25, 0.75}}
    if bits in expect:
        assert levels <= expect[bits]
    else:
        assert len(levels) <= 2**bits and all(float(v).is_integer() for v in levels)


def test_other_gradient_rules_and_widths_are_refused():
    with pytest.raises(ValueError, match="its own gradient"):
        P.paretoq(jnp.ones((4, 2)), jnp.ones((2,)), 2, rule="clipped")
    with pytest.raises(ValueError, match="bit width"):
        P.paretoq_init(jnp.ones((4, 2)), 5)


def test_registry_names_and_the_layer_parameter():
    from flax import nnx

    from bitjax.nn.bitdense import BitDense

    for name, bits in (("paretoq1", 1), ("paretoq158", 1.58), ("paretoq2", 2), ("paretoq3", 3), ("paretoq4", 4)):
        spec = QuantSpec(name)
        layer = BitDense(16, 8, quant=spec, rngs=nnx.Rngs(0))
        alpha = np.asarray(layer.qparams["alpha"][...])
        assert alpha.shape == (8,)  # one step per output feature
        np.testing.assert_allclose(alpha, ref_init(np.asarray(layer.kernel[...]).T, bits), rtol=1e-6)
        assert np.isfinite(np.asarray(layer(jnp.ones((2, 16))))).all()
    with pytest.raises(ValueError, match="paretoq<k>"):
        QuantSpec("paretoq5").weight_quantizer()


@pytest.mark.slow
def test_qat_from_an_fp_run_initialises_the_steps_from_its_kernels(make_config, tmp_path, capsys):
    """config.init_from an fp run: ParetoQ's α (and FBI's α, β) come from the *fp* kernels, as the reference
    initialises them from the pretrained weights, and the run trains."""
    from builders import losses

    from bitjax.run import plan as plan_lib
    from bitjax.train import trainer

    fp = str(tmp_path / "fp")
    trainer.train(make_config("fp", steps=4, **{"optim.warmup_steps": 1}), fp)
    _, fp_params = plan_lib.restore_one_device(fp)
    k = np.asarray(fp_params["layers"][0]["mlp"]["down_proj"]["kernel"])  # (in, out)
    configs = {}
    for method in ("paretoq2", "fbi"):
        if method == "paretoq2":  # through configs/paretoq.py: the reference's optimiser, init_from = src
            spec = importlib.util.spec_from_file_location("cfg_pq", os.path.join(ROOT, "configs", "paretoq.py"))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            cfg = mod.get_config(f"src={fp},bits=2,steps=2,batch=8")
            assert (cfg.model.quant.method, cfg.init_from, cfg.optim.lr) == ("paretoq2", os.path.abspath(fp), 2e-5)
            cfg.log_every, cfg.eval_every, cfg.checkpoint_every, cfg.data.eval_batches = 1, 0, 2, 1
        else:
            cfg = make_config(method, steps=2, **{"init_from": fp, "optim.warmup_steps": 1})
        setup = trainer.Setup(cfg)
        configs[method] = cfg
        params, added = trainer.params_from_run(fp, setup, setup.init_fn(jax.random.key(1))["params"])
        assert "layers.0.mlp.down_proj.qparams.alpha" in added
        q = params["layers"][0]["mlp"]["down_proj"]["qparams"]
        if method == "paretoq2":  # train.py: α = max|W| per row of the (out, in) weight
            np.testing.assert_allclose(np.asarray(q["alpha"]), np.abs(k).max(0), rtol=1e-6)
        else:  # FBI / Bi-Mamba eq. 4, per input feature: β_i = mean_o W_io, α_i = mean_o |W_io − β_i|
            beta = k.mean(1)
            np.testing.assert_allclose(np.asarray(q["beta"]), beta, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(np.asarray(q["alpha"]), np.abs(k - beta[:, None]).mean(1), rtol=1e-5)
    wd = str(tmp_path / "paretoq2")  # the ParetoQ run trains from there
    trainer.train(configs["paretoq2"], wd)
    assert "initialised fresh (absent from" in capsys.readouterr().out  # the inserted parameters are named
    assert len(losses(wd)) == 2 and np.isfinite(losses(wd)).all()
