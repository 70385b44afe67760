"""scan_layers (stacked layers under jax.lax.scan) against the loop layout, and the remat policies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from builders import tiny_config
from flax import nnx
from jax.sharding import PartitionSpec as P

from bitjax.export.hf import hf_state_dict
from bitjax.export.packed import pack_model
from bitjax.models import transformer as T
from bitjax.nn import layer_stack as LS
from bitjax.run import config as config_lib
from bitjax.run import mesh as M
from bitjax.train import trainer

V = 61


def config(scan, method="b158", **kw):
    c = T.default_config()
    c.update(dict(vocab_size=V, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, mlp_dim=48, scan_layers=scan))
    c.quant.method = method
    c.update(kw)
    return c


def pair(method="b158", **kw):
    """(loop model, scan model) holding the same parameters (the scan one's init, unstacked)."""
    scan = T.Transformer(config(True, method, **kw), rngs=nnx.Rngs(1))
    loop = T.Transformer(config(False, method, **kw), rngs=nnx.Rngs(0))
    nnx.update(loop, LS.layers_like(nnx.to_pure_dict(nnx.state(scan)), nnx.to_pure_dict(nnx.state(loop))))
    return loop, scan


def tokens(b=2, l=12, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (b, l)), jnp.int32)


def flat(model):
    return {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model))}


def test_stacked_params_have_a_leading_layers_axis():
    _, scan = pair()
    q = flat(scan)["layers.self_attn.q_proj.kernel"]
    assert q.get_value().shape == (3, 32, 32) and q.get_metadata()["out_sharding"] == ("layers", "embed", "heads")
    assert "layers.0.self_attn.q_proj.kernel" not in flat(scan)


@pytest.mark.parametrize("method", ["fp", "b158", "fbi", "pb_llm"])  # fbi: learned qparams, pb_llm: qstate
def test_scan_forward_equals_loop(method):
    loop, scan = pair(method, sub_norm=True)
    x = tokens()
    a, b = np.asarray(nnx.jit(lambda m: m(x))(loop)), np.asarray(nnx.jit(lambda m: m(x))(scan))
    assert np.abs(a).mean() > 1e-2
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_unstack_layers_is_the_loop_layout():
    loop, scan = pair(tie_embeddings=True)
    un = LS.unstack_layers(scan)
    assert LS.unstack_layers(loop) is loop and scan.scan_layers  # the scan model is left as it was
    f_un, f_loop = flat(un), flat(loop)
    assert f_un.keys() == f_loop.keys()
    for k, v in f_loop.items():
        assert f_un[k].get_metadata()["out_sharding"] == v.get_metadata()["out_sharding"], k
        np.testing.assert_array_equal(np.asarray(f_un[k].get_value()), np.asarray(v.get_value()))
    np.testing.assert_array_equal(np.asarray(un(tokens())), np.asarray(loop(tokens())))
    assert T.hf_param_names(scan) == T.hf_param_names(loop)


def test_layers_like_round_trip():
    loop, scan = pair()
    p_loop, p_scan = nnx.to_pure_dict(nnx.state(loop)), nnx.to_pure_dict(nnx.state(scan))
    back = LS.layers_like(LS.layers_like(p_scan, p_loop), p_scan)
    assert jax.tree.structure(back) == jax.tree.structure(p_scan)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(p_scan)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert LS.layers_like(p_loop, p_loop) is p_loop


@pytest.mark.parametrize("method", ["fp", "b158"])
def test_hf_export_of_scan_equals_loop(method):
    loop, scan = pair(method, sub_norm=True, activation="relu2", tie_embeddings=True)
    a, b = hf_state_dict(loop), hf_state_dict(scan)
    assert a.keys() == b.keys() and "model.layers.2.mlp.down_proj.weight" in a
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow  # ~50-60 s on 2 loaded cores
def test_hf_parity_of_a_scan_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bitjax.export.hf import to_hf_model

    _, scan = pair("b158", vocab_size=V, sub_norm=True, activation="relu2", tie_embeddings=True, rope_theta=500000.0)
    hf = to_hf_model(
        scan, config(True, "b158", sub_norm=True, activation="relu2", tie_embeddings=True, rope_theta=500000.0)
    )
    x = np.random.default_rng(3).integers(0, V, (2, 24))
    with torch.no_grad():
        ref = hf(torch.from_numpy(x)).logits.numpy()
    np.testing.assert_allclose(np.asarray(scan(jnp.asarray(x, jnp.int32))), ref, rtol=0, atol=2e-5)


@pytest.mark.slow  # ~50-60 s on 2 loaded cores
def test_sampling_and_packing_match_the_loop_model():
    from bitjax.eval.sample import generate

    loop, scan = pair("b158", sub_norm=True)
    prompt = tokens(l=5)
    cache = scan.init_cache(2, 16)
    assert cache["k"].shape == (3, 2, 16, 2, 8)  # [layers, B, S, K, hd]
    np.testing.assert_array_equal(
        np.asarray(generate(scan, prompt, 8, temperature=0)), np.asarray(generate(loop, prompt, 8, temperature=0))
    )
    rng = jax.random.key(3)
    np.testing.assert_array_equal(
        np.asarray(generate(scan, prompt, 8, rng=rng, temperature=1.0)),
        np.asarray(generate(loop, prompt, 8, rng=rng, temperature=1.0)),
    )
    x = tokens()
    np.testing.assert_array_equal(np.asarray(pack_model(scan)(x)), np.asarray(pack_model(loop)(x)))


def test_ptq_of_a_scan_model_equals_the_loop_models():
    from bitjax.ptq import quantize_model

    loop, scan = pair("fp")
    x = np.asarray(tokens(b=4, l=16))
    quantize_model(loop, x, "rtn", 3, None, log=lambda *_: None)
    per_layer = LS.unstack_layers(scan)  # what bitjax.ptq.run quantizes, then stores in the run's layout
    quantize_model(per_layer, x, "rtn", 3, None, log=lambda *_: None)
    nnx.update(scan, LS.layers_like(nnx.to_pure_dict(nnx.state(per_layer)), nnx.to_pure_dict(nnx.state(scan))))
    a, b = hf_state_dict(loop), hf_state_dict(scan)
    for k in a:  # the same quantized kernels, bit for bit
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    np.testing.assert_allclose(np.asarray(scan(jnp.asarray(x))), np.asarray(loop(jnp.asarray(x))), atol=1e-6)


@pytest.mark.slow  # ~40-50 s on 2 loaded cores: four compiles
@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_same_loss_and_grads(scan):
    x = tokens()

    def loss_grad(policy):
        model = T.Transformer(config(scan, "b158", remat_policy=policy), rngs=nnx.Rngs(0))
        return nnx.jit(lambda m: nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(m))(model)

    l0, g0 = loss_grad("none")
    for policy in ("full", "save_quantized", "save_dots"):
        l1, g1 = loss_grad(policy)
        np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)


def backward_weight_quantizations(policy, scan=True):
    """Weight roundings that the backward pass of a 2-layer b158 model's compiled gradient runs.

    ternary_absmean rounds W·s (a kernel-shaped array); the activation quantizers round [B, L, ·]
    arrays. Ops of the backward carry 'transpose(' in their op_name metadata.
    """
    model = T.Transformer(config(scan, "b158", n_layers=2, remat_policy=policy), rngs=nnx.Rngs(0))
    x = tokens()
    graphdef, params = nnx.split(model)
    grad = jax.jit(jax.grad(lambda p: jnp.mean(nnx.merge(graphdef, p)(x) ** 2)))
    hlo = grad.lower(params).compile().as_text()
    rounds = [line for line in hlo.splitlines() if "round-nearest" in line and "[2,12," not in line]
    assert rounds  # the forward quantizes the weights: the pattern finds them
    return sum("transpose(" in line for line in rounds)


@pytest.mark.slow  # ~30-50 s on 2 loaded cores: six compiles
@pytest.mark.parametrize("scan", [True, False])
def test_save_quantized_does_not_quantize_weights_twice(scan):
    assert backward_weight_quantizations("none", scan) == 0
    assert backward_weight_quantizations("full", scan) >= 7  # q k v o gate up down, recomputed
    assert backward_weight_quantizations("save_quantized", scan) == 0


def test_config_fields_and_the_remat_alias():
    assert LS.remat_policy(config(True)) == "none"
    old = config(False, remat_policy="none")
    old.remat = True  # a stored config from before remat_policy
    T.validate_config(old)
    assert LS.remat_policy(old) == "full"
    with pytest.raises(ValueError, match=r"config\.model\.remat_policy='dots' is invalid: choose one of"):
        T.validate_config(config(False, remat_policy="dots"))
    bad = config(False, remat_policy="full")
    bad.remat = False
    with pytest.raises(ValueError, match=r"config\.model\.remat=False is invalid: .*remat_policy='full'"):
        T.validate_config(bad)
    for size in ("1b", "3b", "2b4t", "7b"):
        assert T.SIZES[size]["scan_layers"] and T.SIZES[size]["remat_policy"] == "full"
    assert not T.SIZES["tiny"].get("scan_layers", False)
    # a stored config of a run from before scan_layers loads in the loop layout it was written in
    saved = config_lib.trainer_config().to_dict()
    saved["model"] = {k: v for k, v in config(False).to_dict().items() if k not in ("scan_layers", "remat_policy")}
    saved["model"]["remat"] = True
    stored = config_lib.with_defaults(saved).model
    assert stored.scan_layers is False and LS.remat_policy(stored) == "full"


def test_stacked_params_shard_as_their_layer():
    abstract = nnx.state(nnx.eval_shape(lambda: T.Transformer(config(True, d_model=64), rngs=nnx.Rngs(0))))
    mesh = M.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sh = nnx.to_flat_state(M.param_shardings(abstract, mesh))
    spec = {".".join(map(str, p)): v.get_value().spec for p, v in sh}
    assert spec["layers.self_attn.q_proj.kernel"] == P(None, "fsdp", "tensor")
    assert spec["layers.mlp.down_proj.kernel"] == P(None, "tensor", "fsdp")
    assert spec["layers.input_layernorm.scale"] == P(None, "fsdp")


@pytest.mark.slow
def test_train_steps_scan_equal_loop_and_checkpoint_round_trip(data_dir, tmp_path):
    """A few trainer steps on the same params and batches give the same losses; a scan run resumes."""
    losses, states = {}, {}
    setups = {}
    for scan in (False, True):
        c = tiny_config("b158", steps=4, data_dir=data_dir, **{"model.scan_layers": scan, "optim.warmup_steps": 1})
        c.mesh.update(dict(data=2, fsdp=2, tensor=2))
        setups[scan] = s = trainer.Setup(c)
        states[scan] = s.init_fn(jax.random.key(0))
    st = states[True]  # the loop run starts from the scan run's parameters, unstacked
    params = jax.device_put(
        jax.tree.map(np.asarray, LS.layers_like(st["params"], setups[False].abstract_state["params"])),
        setups[False].state_sharding["params"],
    )  # fresh arrays: each step donates its state
    states[False] = {**states[False], "params": params, "opt_state": setups[False].tx.init(params)}
    for scan, s in setups.items():
        st, losses[scan] = states[scan], []
        for step in range(3):
            st, m = s.train_step(st, s.train_batch(step))
            losses[scan].append(float(m["train_loss"]))
        states[scan] = st
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-5)
    np.testing.assert_allclose(  # parameters after 3 AdamW steps, too
        np.asarray(states[True]["params"]["layers"]["mlp"]["up_proj"]["kernel"][1]),
        np.asarray(states[False]["params"]["layers"][1]["mlp"]["up_proj"]["kernel"]),
        atol=1e-5,
    )

    # a scan run through the trainer: train 2 steps with a checkpoint, resume to 4, same as straight to 4
    c = tiny_config(
        "b158", steps=4, data_dir=data_dir, checkpoint_every=2, **{"model.scan_layers": True, "optim.warmup_steps": 1}
    )
    c.mesh.update(dict(data=2, fsdp=2, tensor=2))
    trainer.train(c, str(tmp_path / "a"), stop_after=2)
    resumed = trainer.train(c, str(tmp_path / "a"))
    straight = trainer.train(c, str(tmp_path / "b"))
    assert resumed["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)
    # init_from a loop-layout run into a scan run converts the layout
    c_loop = tiny_config("b158", steps=2, data_dir=data_dir, checkpoint_every=2, **{"optim.warmup_steps": 1})
    c_loop.mesh.update(dict(data=2, fsdp=2, tensor=2))
    trainer.train(c_loop, str(tmp_path / "loop"))
    c.init_from = str(tmp_path / "loop")
    assert np.isfinite(trainer.train(c, str(tmp_path / "from_loop"), stop_after=1)["train_loss"])


@pytest.mark.slow  # ~35 s on 2 loaded cores
def test_gguf_of_a_scan_model_is_the_loop_models_file(tmp_path):
    pytest.importorskip("gguf")
    from bitjax.data.tokenizers import ByteTokenizer
    from bitjax.export.gguf import save_gguf

    kw = dict(vocab_size=384, d_model=256, n_heads=4, n_kv_heads=2, mlp_dim=512, sub_norm=True, tie_embeddings=True)
    loop, scan = pair("b158", **kw)
    for name, model in (("loop", loop), ("scan", scan)):
        save_gguf(
            model, config(name == "scan", "b158", **kw), str(tmp_path / f"{name}.gguf"), tokenizer=ByteTokenizer()
        )
    assert (tmp_path / "scan.gguf").read_bytes() == (tmp_path / "loop.gguf").read_bytes()


# ============================================================================ Mamba-2 (same layer_stack)
def mamba_pair(method="bimamba", **kw):
    """(loop, scan) Mamba2LMs holding the same parameters (the scan one's init, unstacked)."""
    from bitjax.models import mamba2 as M

    def cfg(scan):
        c = M.default_config()
        c.update(dict(vocab_size=V, d_model=32, n_layers=3, d_state=8, headdim=16, chunk_size=8, scan_layers=scan))
        c.quant.method = method
        c.update(kw)
        return c

    scan, loop = M.Mamba2LM(cfg(True), rngs=nnx.Rngs(1)), M.Mamba2LM(cfg(False), rngs=nnx.Rngs(0))
    nnx.update(loop, LS.layers_like(nnx.to_pure_dict(nnx.state(scan)), nnx.to_pure_dict(nnx.state(loop))))
    return loop, scan


@pytest.mark.parametrize("method", ["fp", "bimamba"])
def test_mamba2_scan_equals_loop_forward_decode_and_hf_names(method):
    from bitjax.eval.sample import generate

    loop, scan = mamba_pair(method, ngroups=2, tie_embeddings=False)
    assert flat(scan)["layers.mixer.in_proj.kernel"].get_metadata()["out_sharding"] == ("layers", "embed", "ssm_in")
    x = tokens(l=13)
    a, b = np.asarray(nnx.jit(lambda m: m(x))(loop)), np.asarray(nnx.jit(lambda m: m(x))(scan))
    assert np.abs(a).mean() > 1e-2
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    cache = scan.init_cache(2)
    assert cache["ssm"].shape == (3, 2, scan.heads, 16, 8)  # [layers, B, H, P, N]
    np.testing.assert_array_equal(
        np.asarray(generate(scan, tokens(l=5), 6, temperature=0)),
        np.asarray(generate(loop, tokens(l=5), 6, temperature=0)),
    )
    hf_a, hf_b = hf_state_dict(loop), hf_state_dict(scan)
    assert hf_a.keys() == hf_b.keys() and "backbone.layers.2.mixer.out_proj.weight" in hf_a
    for k in hf_a:
        np.testing.assert_array_equal(hf_a[k], hf_b[k], err_msg=k)


@pytest.mark.slow  # ~20 s: three compiles
def test_mamba2_remat_policies_same_grads_and_presets():
    from bitjax.models import mamba2 as M

    _, scan = mamba_pair("bimamba")
    x = tokens()
    graphdef, params = nnx.split(scan)

    def loss_grad(policy):
        model = nnx.merge(graphdef, params)
        model.remat_policy = policy
        return nnx.jit(lambda m: nnx.value_and_grad(lambda m: jnp.mean(m(x) ** 2))(m))(model)

    l0, g0 = loss_grad("none")
    for policy in ("full", "save_quantized"):
        l1, g1 = loss_grad(policy)
        np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-7)
    for size in ("780m", "1.3b", "2.7b"):
        assert M.SIZES[size]["scan_layers"] and M.SIZES[size]["remat_policy"] == "full"
    old = M.default_config()
    old.remat = True  # a stored config from before remat_policy
    M.validate_config(old)
    assert LS.remat_policy(old) == "full"
