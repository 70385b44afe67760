"""bitjax.nn.sharding: activation constraints by logical name, on the rules table; a no-op outside a step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from bitjax.nn import sharding
from bitjax.run import mesh as mesh_lib


def _mesh(data=2, fsdp=4, tensor=1):
    return mesh_lib.make_mesh(ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor}), jax.devices()[:8])


def _rules(mesh, rules=mesh_lib.DEFAULT_RULES):
    return sharding.logical_rules(mesh, functools.partial(mesh_lib.logical_to_pspec, rules=rules))


def test_constrain_shards_the_batch_under_rules_and_is_identity_without():
    x = jnp.arange(8 * 3 * 4, dtype=jnp.float32).reshape(8, 3, 4)
    assert sharding.constrain(x, ("batch", "length", "embed")) is x  # no rules in context: untouched
    mesh = _mesh()

    def f(a):
        with _rules(mesh):
            return sharding.constrain(a * 2.0, ("batch", "length", "embed"))

    y = jax.jit(f)(x)
    # batch → (data, fsdp); embed's fsdp is taken by batch, so dims 1 and 2 stay replicated
    assert y.sharding.spec == P(("data", "fsdp"))
    assert {s.data.shape for s in y.addressable_shards} == {(1, 3, 4)}  # 8 rows over 8 devices
    np.testing.assert_array_equal(np.asarray(y), 2.0 * np.asarray(x))


def test_axes_that_do_not_divide_a_dim_are_dropped_and_one_device_is_a_no_op():
    mesh = _mesh(2, 2, 2)
    # batch 2 over data=2 × fsdp=2: data divides 2, data·fsdp = 4 does not → 'data'; vocab 5 over tensor=2: dropped
    with _rules(mesh):
        jaxpr = jax.make_jaxpr(lambda a: sharding.constrain(a, ("batch", "length", "vocab")))(jnp.zeros((2, 3, 5)))
    (eqn,) = jaxpr.jaxpr.eqns
    assert eqn.primitive.name == "sharding_constraint" and eqn.params["sharding"].spec == P("data", None, None)
    with _rules(mesh_lib.make_mesh(ConfigDict(dict(data=1, fsdp=1, tensor=1)), jax.devices()[:1])):
        jaxpr = jax.make_jaxpr(lambda a: sharding.constrain(a, ("batch", "length", "vocab")))(jnp.zeros((2, 3, 6)))
    assert not jaxpr.jaxpr.eqns  # one device: nothing added, so one-device programs are unchanged
    with _rules(mesh), pytest.raises(ValueError, match="3 logical names"):
        sharding.constrain(jnp.zeros((2, 3)), ("batch", "length", "embed"))


def test_rules_table_decides_the_axes():
    mesh = _mesh(1, 2, 4)
    rules = (("batch", "fsdp"), ("length", None), ("embed", "tensor"))  # MaxText-like activation_embed → tensor
    with _rules(mesh, rules):
        jaxpr = jax.make_jaxpr(lambda a: sharding.constrain(a, ("batch", "length", "embed")))(jnp.zeros((4, 3, 8)))
    assert jaxpr.jaxpr.eqns[0].params["sharding"].spec == P("fsdp", None, "tensor")
