"""bitjax.nn.sharding: the activation constraint shards the batch under a mesh and is a no-op without one."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from bitjax.nn import sharding
from bitjax.run import mesh as mesh_lib


def test_batch_sharded_under_a_mesh_and_identity_without():
    x = jnp.arange(8 * 3 * 4, dtype=jnp.float32).reshape(8, 3, 4)
    np.testing.assert_array_equal(sharding.batch_sharded(x), x)  # no context mesh: untouched
    mesh = mesh_lib.make_mesh(ConfigDict({"data": 2, "fsdp": 4, "tensor": 1}), jax.devices()[:8])
    with jax.set_mesh(mesh):
        y = jax.jit(lambda a: sharding.batch_sharded(a * 2.0))(x)
    assert y.sharding.spec == P(("data", "fsdp"))  # trailing Nones dropped: dims 1, 2 replicated
    assert {s.data.shape for s in y.addressable_shards} == {(1, 3, 4)}  # 8 rows over 8 devices
    np.testing.assert_array_equal(np.asarray(y), 2.0 * np.asarray(x))
