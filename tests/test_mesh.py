import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from bitjax.run import mesh as M


def mesh222():
    return M.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


class Tiny(nnx.Module):
    """Mesh-agnostic params: logical names only, no eager sharding."""

    def __init__(self, embed=8, mlp=16, vocab=32, rngs=None):
        def param(shape, names):
            return nnx.Param(jnp.ones(shape), out_sharding=names, eager_sharding=False)

        self.embedding = param((vocab, embed), ("vocab", "embed"))
        self.layers = nnx.List(
            [
                nnx.Dict(
                    up=param((embed, mlp), ("embed", "mlp")),
                    down=param((mlp, embed), ("mlp", "embed")),
                    norm=nnx.Param(jnp.ones((embed,))),
                )
            ]
        )

    def __call__(self, x):
        h = self.embedding[...][x]
        lay = self.layers[0]
        return (jax.nn.relu(h @ lay["up"][...]) @ lay["down"][...]) * lay["norm"][...]


# --- make_mesh ---------------------------------------------------------------


def test_mesh_rest_resolves_and_is_auto():
    m = M.make_mesh(ConfigDict({"data": 1, "fsdp": -1, "tensor": 2}))
    assert dict(m.shape) == {"data": 1, "fsdp": 4, "tensor": 2}
    assert m.axis_names == ("data", "fsdp", "tensor")
    assert all(t == AxisType.Auto for t in m.axis_types)
    assert dict(M.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}).shape)["data"] == 8


@pytest.mark.parametrize(
    "cfg, needles",
    [
        ({"data": 1, "fsdp": 3, "tensor": 2}, ["config.mesh.fsdp=3", "8 devices", "-1"]),
        ({"data": 1, "fsdp": 0, "tensor": 2}, ["config.mesh.fsdp = 0", "8 devices"]),
        ({"data": -1, "fsdp": -1, "tensor": 2}, ["config.mesh.data", "config.mesh.fsdp", "at most one"]),
        ({"data": 3, "fsdp": -1, "tensor": 1}, ["config.mesh.fsdp = -1", "do not divide 8"]),
        ({"data": 1, "fsdp": 2.0, "tensor": 4}, ["config.mesh.fsdp = 2.0"]),
        ({"data": 1, "fsdp": 8}, ["missing", "tensor"]),
    ],
)
def test_bad_mesh_names_field(cfg, needles):
    with pytest.raises(ValueError) as e:
        M.make_mesh(cfg)
    for s in needles:
        assert s in str(e.value), str(e.value)


# --- rules ---------------------------------------------------------------------


def test_rules_to_pspecs():
    r = M.DEFAULT_RULES
    assert M.logical_to_pspec(("embed", "mlp"), r) == P("fsdp", "tensor")
    assert M.logical_to_pspec(("vocab", "embed"), r) == P("tensor", "fsdp")
    assert M.logical_to_pspec(("batch", "length"), r) == P(("data", "fsdp"), None)
    assert M.logical_to_pspec(("embed", "heads", "head_dim"), r) == P("fsdp", "tensor", None)
    assert M.logical_to_pspec((None, "state"), r) == P(None, None)
    # A mesh axis shards one dim only: the later use is dropped.
    assert M.logical_to_pspec(("batch", "length", "embed"), r) == P(("data", "fsdp"), None, None)
    assert M.logical_to_pspec(("embed", "batch"), r) == P("fsdp", "data")
    # Fallback rules for one name: the first whose axes are free wins.
    r2 = (("x", "tensor"), ("x", "fsdp"), ("y", "tensor"))
    assert M.logical_to_pspec(("y", "x"), r2) == P("tensor", "fsdp")
    with pytest.raises(ValueError, match="Unknown logical axis name 'mpl'"):
        M.logical_to_pspec(("embed", "mpl"), r)


def test_rules_config_roundtrip():
    cfg = ConfigDict({"axis_rules": M.rules_to_config()})
    assert M.rules_from_config(cfg.axis_rules) == M.DEFAULT_RULES
    assert M.rules_from_config([["a", ["x"]], ["b", []]]) == (("a", "x"), ("b", None))
    with pytest.raises(ValueError, match=r"config.axis_rules\[0\]"):
        M.rules_from_config([["a", "x", "y"]])


# --- param shardings -------------------------------------------------------------


def _specs(shardings):
    return {M.path_str(p): s.spec for p, s in jax.tree_util.tree_flatten_with_path(shardings)[0]}


def test_param_shardings_from_metadata():
    mesh = mesh222()
    abstract = nnx.state(nnx.eval_shape(lambda: Tiny()))
    specs = _specs(M.param_shardings(abstract, mesh, M.DEFAULT_RULES))
    assert specs == {
        "embedding.value": P("tensor", "fsdp"),
        "layers.0.down.value": P("tensor", "fsdp"),
        "layers.0.norm.value": P(),
        "layers.0.up.value": P("fsdp", "tensor"),
    }


def test_param_shardings_jit_init_and_optimizer_state():
    mesh = mesh222()
    tx = optax.adamw(1e-3)
    init = lambda: nnx.state(nnx.Optimizer(Tiny(), tx, wrt=nnx.Param))
    abstract = jax.eval_shape(init)
    shard = M.param_shardings(abstract, mesh)
    specs = _specs(shard)
    # Moments inherit the param's out_sharding; counts are replicated.
    assert specs["opt_state.0.mu.layers.0.up.value"] == P("fsdp", "tensor")
    assert specs["opt_state.0.nu.embedding.value"] == P("tensor", "fsdp")
    assert specs["opt_state.0.count.value"] == P()
    assert specs["step.value"] == P()
    state = jax.jit(init, out_shardings=shard)()
    got = _specs(jax.tree.map(lambda x: x.sharding, state))
    assert got == specs


def test_unknown_name_error_has_path():
    mesh = mesh222()
    st = nnx.state(nnx.eval_shape(lambda: Tiny()))
    with pytest.raises(ValueError, match=r"^embedding: Unknown logical axis name 'embed'"):
        M.param_shardings(st, mesh, (("vocab", "tensor"), ("mlp", "tensor")))
    with pytest.raises(ValueError, match="names mesh axes \\['model'\\]"):
        M.param_shardings(st, mesh, M.DEFAULT_RULES + (("foo", "model"),))


def test_check_divisible():
    mesh = mesh222()
    M.check_divisible(nnx.state(nnx.eval_shape(lambda: Tiny())), mesh)  # fine
    bad = {"model": nnx.state(nnx.eval_shape(lambda: Tiny(mlp=9)))}
    with pytest.raises(ValueError) as e:
        M.check_divisible(bad, mesh, hints={"mlp": "config.model.mlp_dim"})
    msg = str(e.value)
    assert (
        "model.layers.0.up shape (8, 9): dim 1 ('mlp' → tensor=2) is not divisible by 2; "
        "change config.model.mlp_dim or config.mesh.tensor"
    ) in msg
    assert "model.layers.0.down shape (9, 8): dim 0" in msg
    mesh4 = M.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
    with pytest.raises(ValueError, match=r"embedding shape \(36, 8\): dim 0 \('vocab' → tensor=8\)"):
        M.check_divisible(nnx.state(nnx.eval_shape(lambda: Tiny(vocab=36))), mesh4)


# --- batches -------------------------------------------------------------------


def test_shard_batch():
    mesh = mesh222()
    local = {"tokens": np.arange(8 * 5).reshape(8, 5), "weights": np.ones((8,), np.float32)}
    g = M.shard_batch(local, mesh, M.DEFAULT_RULES)
    assert g["tokens"].shape == (8, 5)
    assert g["tokens"].sharding == M.batch_sharding(mesh, M.DEFAULT_RULES)
    assert g["tokens"].sharding.spec == P(("data", "fsdp"), None)
    assert g["weights"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(g["tokens"]), local["tokens"])
    # each device holds 8 / (data*fsdp) = 2 rows
    assert {s.data.shape for s in g["tokens"].addressable_shards} == {(2, 5)}
    with pytest.raises(ValueError, match="multiple of 4"):
        M.shard_batch(np.zeros((6, 5)), mesh, M.DEFAULT_RULES)


def test_creation_under_use_eager_sharding_false_context():
    """The alternative to per-param eager_sharding=False: no mesh needed at creation."""
    with nnx.use_eager_sharding(False):
        p = nnx.Param(jnp.ones((4, 6)), out_sharding=("embed", "mlp"))
    specs = _specs(M.param_shardings({"p": p}, mesh222()))
    assert specs == {"p.value": P("fsdp", "tensor")}
