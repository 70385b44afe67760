"""EfficientQAT's E2E-QP (bitjax.quant.efficientqat.e2e_qp, configs/e2e_qp.py): the layer against a numpy
restatement of the paper's §3.3 (codes and zero points frozen, only the step sizes trained), the
optimizer's `trainable` filter, and E2E-QP end to end from a Block-AP output of a tiny run: step 0 is the
source's model, then only the step changes move and every kernel stays on its frozen codes."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ptq import fp_run, kernels  # noqa: F401  (the tiny FP run fixture, built once per module)

from bitjax import ptq
from bitjax.quant import efficientqat
from bitjax.quant.registry import QuantSpec
from bitjax.run import plan as plan_lib
from bitjax.train import optim, trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_grid_weight(rng, d_in, d_out, bits, g):
    """A kernel on a k-bit asymmetric grid whose codes span 0..2^k − 1 in every group (Block-AP's W̃):
    (w (in, out), s (G, out), z (G, out), codes (in, out))."""
    qmax, n_groups = 2**bits - 1, d_in // g
    codes = rng.integers(0, qmax + 1, size=(d_in, d_out))
    for j in range(n_groups):  # every group holds both ends of the grid
        codes[j * g, :], codes[j * g + 1, :] = 0, qmax
    s = rng.uniform(0.01, 0.1, size=(n_groups, d_out))
    z = rng.integers(1, qmax, size=(n_groups, d_out)).astype(np.float64)
    w = np.repeat(s, g, axis=0) * (codes - np.repeat(z, g, axis=0))
    return w.astype(np.float32), s, z, codes


@pytest.mark.parametrize("bits, g", [(2, 8), (3, 16), (4, 32)])
def test_e2e_qp_is_the_frozen_codes_times_the_trained_step(bits, g):
    """W̃ = (s + Δs)·(C − z) with C, z the kernel's own codes and zero points; ∂/∂Δs = Σ_group r·(C − z);
    no gradient to the kernel (numpy restatement, per group of g input rows and per channel)."""
    rng = np.random.default_rng(bits)
    d_in, d_out = 32, 5
    w, s, z, codes = numpy_grid_weight(rng, d_in, d_out, bits, g)
    gran = "channel" if g == d_in else f"group{g}"
    ds = rng.normal(scale=0.01, size=s.shape).astype(np.float32)
    r = rng.normal(size=(d_in, d_out)).astype(np.float32)
    want = np.repeat(s + ds, g, axis=0) * (codes - np.repeat(z, g, axis=0))
    f = lambda w_, ds_: efficientqat.e2e_qp(w_, ds_, bits, gran)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(w), jnp.asarray(ds))), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(w), jnp.zeros_like(ds))), w, rtol=1e-5, atol=1e-7)
    gw, gds = jax.grad(lambda *a: jnp.sum(f(*a) * r), argnums=(0, 1))(jnp.asarray(w), jnp.asarray(ds))
    want_g = (r * (codes - np.repeat(z, g, axis=0))).reshape(d_in // g, g, d_out).sum(axis=1)
    np.testing.assert_allclose(np.asarray(gds), want_g, rtol=1e-4, atol=1e-5)
    assert not np.asarray(gw).any()


def test_e2e_qp_layer_spec_and_its_learned_step():
    spec = QuantSpec(weight="e2e_qp3", weight_options=(("granularity", "group8"),))
    learned = spec.init_learned(jnp.ones((32, 6)))
    assert set(learned) == {"dstep"} and learned["dstep"][0].shape == (4, 6) and learned["dstep"][1] == "group"
    assert not np.asarray(learned["dstep"][0]).any()  # 0 whatever the kernel: init_from starts at the source
    assert QuantSpec(weight="e2e_qp3").init_learned(jnp.ones((32, 6)))["dstep"][0].shape == (1, 6)  # per channel


def test_trainable_leaves_the_rest_untouched():
    cfg = optim.default_config()
    cfg.trainable, cfg.warmup_steps, cfg.weight_decay = r"\.dstep$", 0, 0.1
    tx, _ = optim.make_optimizer(cfg, 10)
    params = {"a": {"kernel": jnp.ones((3, 3)), "qparams": {"dstep": jnp.zeros((1, 3))}}, "norm": jnp.ones(3)}
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert not np.asarray(updates["a"]["kernel"]).any() and not np.asarray(updates["norm"]).any()
    assert np.asarray(updates["a"]["qparams"]["dstep"]).all()
    cfg.trainable = "nothing_matches"
    tx, _ = optim.make_optimizer(cfg, 10)
    with pytest.raises(ValueError, match="config.optim.trainable = 'nothing_matches' matches no parameter"):
        tx.init(params)
    cfg.trainable = "("
    with pytest.raises(ValueError, match="config.optim.trainable"):
        optim.make_optimizer(cfg, 10)


def e2e_config(src, **arg):
    spec = importlib.util.spec_from_file_location("e2e_qp", os.path.join(ROOT, "configs", "e2e_qp.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(",".join(f"{k}={v}" for k, v in {"src": src, **arg}.items()))


def test_e2e_qp_from_a_block_ap_output_trains_only_the_steps(fp_run, tmp_path):  # noqa: F811
    src = str(tmp_path / "eqat2")
    ptq.run(fp_run, "efficientqat", 2, src, calib_sequences=4, epochs=1, group_size=16)
    cfg = e2e_config(src, bits=2, group_size=16, steps=6, lr=1e-3)
    cfg.log_every, cfg.eval_every, cfg.checkpoint_every, cfg.data.eval_batches = 1, 0, 6, 1
    assert cfg.init_from == os.path.abspath(src) and cfg.optim.trainable == r"\.dstep$"
    trainer.train(cfg, str(tmp_path / "e2e"))
    with open(tmp_path / "e2e" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == 6 and all(np.isfinite(r["train_loss"]) for r in rows)
    plan, params = plan_lib.restore_one_device(str(tmp_path / "e2e"))
    _, src_params = plan_lib.restore_one_device(src)
    flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t)}
    got, was = flat(params), flat(src_params)
    steps = {k: v for k, v in got.items() if k.endswith("['dstep']")}
    assert len(steps) == 14 and any(v.any() for v in steps.values())  # 2 layers × 7 projections, trained
    for k, v in was.items():  # everything else exactly as Block-AP left it
        np.testing.assert_array_equal(got[k], v, err_msg=k)
    model = plan.model(params)
    for i in range(2):  # each W̃ still takes ≤ 4 values per group of 16 rows: the codes did not move
        w = np.asarray(model.layers[i].mlp.down_proj.quantized_kernel())
        assert max(len(np.unique(w[j : j + 16, o])) for j in range(0, w.shape[0], 16) for o in range(w.shape[1])) <= 4
