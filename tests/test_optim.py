import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bitjax.train import optim


def cfg(**kw):
    c = optim.default_config()
    c.update(dict(warmup_steps=2), **kw)
    return c


# --- schedules -------------------------------------------------------------------


def test_cosine_linear_constant_schedule_values():
    lr, W, T, m = 1e-3, 10, 110, 0.1
    _, f = optim.make_optimizer(cfg(lr=lr, warmup_steps=W, min_lr_ratio=m), T)
    assert float(f(0)) == pytest.approx(lr * 1 / W)
    assert float(f(4)) == pytest.approx(lr * 5 / W)
    assert float(f(W)) == pytest.approx(lr)
    assert float(f(60)) == pytest.approx(lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert float(f(85)) == pytest.approx(lr * (m + (1 - m) * 0.5 * (1 + math.cos(math.pi * 0.75))))
    assert float(f(T)) == pytest.approx(lr * m)
    assert float(f(10 * T)) == pytest.approx(lr * m)

    _, f = optim.make_optimizer(cfg(lr=lr, warmup_steps=W, min_lr_ratio=m, schedule="linear"), T)
    assert float(f(35)) == pytest.approx(lr * (m + (1 - m) * 0.75))
    _, f = optim.make_optimizer(cfg(lr=lr, warmup_steps=0, schedule="constant"), T)
    assert float(f(0)) == pytest.approx(lr) and float(f(T - 1)) == pytest.approx(lr)
    # jit-able with a traced step
    assert float(jax.jit(f)(jnp.int32(3))) == pytest.approx(lr)


def test_two_stage_lr_drop_and_wd_to_zero():
    lr, W, T, m, s2, wd = 1.5e-3, 10, 100, 0.0, 1 / 3, 0.1
    c = cfg(
        lr=lr,
        warmup_steps=W,
        schedule="two_stage",
        min_lr_ratio=m,
        stage2_lr_ratio=s2,
        weight_decay=wd,
        stage2_frac=0.5,
    )
    lr_fn, wd_fn = optim.make_schedules(c, T)
    stage1 = lambda t: m + (1 - m) * 0.5 * (1 + math.cos(math.pi * (t - W) / (T - W)))
    assert float(lr_fn(W)) == pytest.approx(lr)
    assert float(lr_fn(49)) == pytest.approx(lr * stage1(49))  # ~ 0.56 * lr: cosine half way
    assert float(lr_fn(50)) == pytest.approx(lr * s2)  # sudden drop
    assert float(lr_fn(49)) > 1.5 * float(lr_fn(50))
    assert float(lr_fn(75)) == pytest.approx(lr * (m + (s2 - m) * 0.5))
    assert float(lr_fn(T)) == pytest.approx(lr * m, abs=1e-12)
    assert float(wd_fn(W)) == pytest.approx(wd)  # peak
    assert float(wd_fn(49)) == pytest.approx(wd * stage1(49))
    assert float(wd_fn(50)) == 0.0 and float(wd_fn(99)) == 0.0


def test_two_stage_applied_decay_follows_schedules():
    """Zero grads ⇒ Adam's term is 0, so each update is exactly -lr_t * wd_t * p."""
    T = 8
    c = cfg(lr=0.1, warmup_steps=2, schedule="two_stage", min_lr_ratio=0.0, weight_decay=0.1)
    tx, lr_fn = optim.make_optimizer(c, T)
    _, wd_fn = optim.make_schedules(c, T)
    params = {"w": jnp.ones((2, 2)), "norm_scale": jnp.ones((2, 2))}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(T):
        zeros = jax.tree.map(jnp.zeros_like, params)
        upd, state = step(zeros, state, params)
        np.testing.assert_allclose(upd["w"], -lr_fn(t) * wd_fn(t) * params["w"], rtol=1e-6)
        np.testing.assert_array_equal(upd["norm_scale"], 0.0)
        params = optax.apply_updates(params, upd)
        # stage 1 (t < T/2) decays the weights, stage 2 does not
        assert (float(jnp.abs(upd["w"]).max()) > 0.0) == (t < T // 2)


# --- weight-decay mask ------------------------------------------------------------


class Net(nnx.Module):
    def __init__(self, rngs):
        self.embed_tokens = nnx.Embed(16, 4, rngs=rngs)
        self.attn = nnx.Dict(q_proj=nnx.Linear(4, 4, use_bias=True, rngs=rngs))
        self.input_norm = nnx.RMSNorm(4, rngs=rngs)
        self.mlp = nnx.Dict(
            up=nnx.Linear(4, 8, use_bias=False, rngs=rngs),
            alpha=nnx.Param(jnp.ones((1, 8))),
            w_scale=nnx.Param(jnp.ones((1, 1))),
        )
        self.final_norm = nnx.LayerNorm(4, rngs=rngs)
        self.lm_head = nnx.Linear(4, 16, use_bias=False, rngs=rngs)
        self.gain = nnx.Param(jnp.ones((4,)))  # 1-D: never decayed

    def __call__(self, x):
        h = self.input_norm(self.embed_tokens(x))
        h = self.attn["q_proj"](h)
        h = jax.nn.relu(self.mlp["up"](h)) * self.mlp["alpha"][...] * self.mlp["w_scale"][...]
        return self.lm_head(self.final_norm(h[..., :4] * self.gain[...]))


def test_wd_mask_excludes_norms_scales_embeddings():
    model = Net(nnx.Rngs(0))
    names = optim.decayed_param_names(nnx.state(model, nnx.Param))
    assert names == ["attn.q_proj.kernel", "lm_head.kernel", "mlp.up.kernel"]
    # same answer on pure arrays (what nnx.Optimizer.update passes to tx.update)
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    assert optim.decayed_param_names(pure) == names


def test_optimizer_with_nnx_optimizer():
    model = Net(nnx.Rngs(0))
    tx, _ = optim.make_optimizer(cfg(warmup_steps=0, schedule="constant", weight_decay=0.5), 10)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))

    @nnx.jit
    def train_step(model, opt, x):
        loss, grads = nnx.value_and_grad(lambda m: (m(x) ** 2).mean())(model)
        opt.update(model, grads)
        return loss

    train_step(model, opt, jnp.arange(6).reshape(2, 3))
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before, after)
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("which", ["matrices", "all"])
def test_weight_decay_params_decide_which_params_decay(which):
    """With zero gradients AdamW's update is −lr·wd·p exactly on decayed params, 0 elsewhere; 'all' (FBI's
    and Bi-Mamba's reference AdamW over model.parameters()) decays norms, α, scales, biases, embeddings."""
    model = Net(nnx.Rngs(0))
    params = jax.tree.map(lambda p: p + 1.0, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # no zeros
    params["qstate"] = {"mask": jnp.ones((4, 4))}  # frozen quantizer state: never decayed
    lr, wd = 0.1, 0.5
    c = cfg(warmup_steps=0, schedule="constant", lr=lr, weight_decay=wd, grad_clip=0.0, weight_decay_params=which)
    tx, _ = optim.make_optimizer(c, 10)
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    flat = jax.tree_util.tree_flatten_with_path(updates)[0]
    decayed = {".".join(str(k.key) for k in path) for path, u in flat if bool(jnp.any(u != 0))}
    for path, u in flat:
        p = params
        for k in path:
            p = p[k.key]
        name = ".".join(str(k.key) for k in path)
        want = -lr * wd * np.asarray(p) if name in decayed else 0.0
        np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, err_msg=name)
    every = {".".join(str(k.key) for k in path) for path, _ in flat} - {"qstate.mask"}
    if which == "matrices":
        assert decayed == {"attn.q_proj.kernel", "lm_head.kernel", "mlp.up.kernel"}
    else:
        assert decayed == every and "mlp.alpha" in every and "input_norm.scale" in every


def test_clipping_by_global_norm():
    g = {"a": jnp.full((2, 2), 3.0), "b": jnp.full((4,), 4.0)}  # global norm = sqrt(36 + 64) = 10
    params = jax.tree.map(jnp.zeros_like, g)
    for clip, scale in ((1.0, 0.1), (0.0, 1.0), (100.0, 1.0)):
        tx, _ = optim.make_optimizer(cfg(grad_clip=clip, b1=0.9), 10)
        _, state = tx.update(g, tx.init(params), params)
        mu = optax.tree_utils.tree_get(state, "mu")  # (1 - b1) * clipped grads
        np.testing.assert_allclose(mu["a"], 0.1 * 3.0 * scale, rtol=1e-5)
        np.testing.assert_allclose(mu["b"], 0.1 * 4.0 * scale, rtol=1e-5)


# --- config validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(schedule="cosin"), "config.optim.schedule"),
        (dict(lr=0.0), "config.optim.lr = 0.0"),
        (dict(b2=1.0), "config.optim.b2"),
        (dict(warmup_steps=500), "config.optim.warmup_steps = 500"),
        (dict(schedule="two_stage", warmup_steps=60), "before stage 2"),
        (dict(schedule="two_stage", stage2_frac=1.0), "config.optim.stage2_frac"),
        (dict(schedule="two_stage", stage2_lr_ratio=0.05), "config.optim.stage2_lr_ratio"),
        (dict(grad_clip=-1.0), "config.optim.grad_clip"),
        (dict(name="lion"), "config.optim.name = 'lion'"),
        (dict(weight_decay_params="some"), "config.optim.weight_decay_params = 'some'"),
    ],
)
def test_bad_config(kw, needle):
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        optim.make_optimizer(cfg(**kw), 100)


def test_unknown_field():
    c = optim.default_config().to_dict()
    c["weight_decay_rate"] = 0.1
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['weight_decay_rate'\]"):
        optim.make_optimizer(c, 100)
