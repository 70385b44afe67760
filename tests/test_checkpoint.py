import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.run import mesh as M
from bitjax.run.checkpoint import Checkpointer, abstract_with_shardings
from bitjax.train import optim

# A failed orbax read (the corrupt / incompatible cases below) can leave un-awaited
# tasks behind in orbax's event loop; harmless noise, reported at garbage collection.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]


class Tiny(nnx.Module):
    def __init__(self, rngs):
        def param(shape, names):
            return nnx.Param(jax.random.normal(rngs.params(), shape), out_sharding=names, eager_sharding=False)

        self.embedding = param((32, 8), ("vocab", "embed"))
        self.up = param((8, 16), ("embed", "mlp"))
        self.norm = nnx.Param(jnp.ones((8,)))


def make_state(mesh, seed=0):
    """Sharded nnx.State of (model, optimizer), built under jit with out_shardings."""
    c = optim.default_config()
    c.update(warmup_steps=2, schedule="two_stage")
    tx, _ = optim.make_optimizer(c, 10)
    init = lambda: nnx.state((m := Tiny(nnx.Rngs(seed)), nnx.Optimizer(m, tx, wrt=nnx.Param)))
    abstract = jax.eval_shape(init)
    shardings = M.param_shardings(abstract, mesh)
    return jax.jit(init, out_shardings=shardings)(), abstract_with_shardings(abstract, shardings)


@pytest.fixture(scope="module")
def mesh():
    return M.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        assert x.sharding.is_equivalent_to(y.sharding, x.ndim)


def test_roundtrip_values_shardings_metadata(tmp_path, mesh):
    state, target = make_state(mesh)
    assert state[0]["up"].get_value().sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    meta = {"model": {"name": "tiny", "dims": (8, 16)}, "step_tokens": np.int64(7)}
    with Checkpointer(tmp_path / "ck", keep=2, save_every=5) as ck:
        assert ck.latest_step() is None
        assert not ck.save(3, state, meta)  # not a multiple of save_every
        assert ck.save(5, state, meta)
        ck.wait()
        assert ck.latest_step() == 5
    ck = Checkpointer(tmp_path / "ck", keep=2, save_every=5)  # fresh process view
    restored = ck.restore(5, target)
    assert_same(restored, state)
    assert ck.restore_metadata(5) == {"model": {"name": "tiny", "dims": [8, 16]}, "step_tokens": 7}
    assert ck.restore_metadata() == ck.restore_metadata(5)
    assert_same(ck.restore(None, target), state)
    ck.close()


def test_keep_deletes_old(tmp_path, mesh):
    state = {"w": jnp.arange(8.0)}
    with Checkpointer(tmp_path, keep=2, save_every=1) as ck:
        for s in range(1, 6):
            assert ck.save(s, state, {"s": s})
        ck.wait()
        assert ck.all_steps() == [4, 5]
    assert sorted(os.listdir(tmp_path)) == ["4", "5"]


def _garble(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        f.seek(0)
        f.write(bytes(b ^ 0xFF for b in data))


@pytest.mark.parametrize("damage", ["garble_manifest", "delete_state"])
def test_damaged_latest_falls_back(tmp_path, mesh, caplog, damage):
    state, target = make_state(mesh)
    ck = Checkpointer(tmp_path, keep=5, save_every=1)
    for s in (1, 2):
        ck.save(s, jax.tree.map(lambda x, s=s: x + s, state), {"s": s})
    ck.close()
    if damage == "garble_manifest":
        _garble(tmp_path / "2" / "state" / "manifest.ocdbt")
    else:
        for root, _, files in os.walk(tmp_path / "2" / "state", topdown=False):
            for f in files:
                os.remove(os.path.join(root, f))
            os.rmdir(root)
    # An unfinished async save leaves only a tmp dir: never listed, never touched.
    junk = tmp_path / "3.orbax-checkpoint-tmp-123"
    junk.mkdir()
    (junk / "x").write_text("partial")

    ck = Checkpointer(tmp_path, keep=5, save_every=1)
    assert ck.latest_step() == 2
    with caplog.at_level(logging.WARNING, logger="bitjax.run.checkpoint"):
        step, restored = ck.restore_latest(target)
    assert step == 1
    assert_same(restored, jax.tree.map(lambda x: x + 1, state))
    assert "step 2" in caplog.text and "could not be restored" in caplog.text
    with pytest.raises(FileNotFoundError):  # orbax's error for a damaged or emptied step
        ck.restore(2, target)  # an explicit step is never substituted

    # Resuming from 1 and saving 2 again works: the damaged dir is renamed, not deleted.
    assert ck.save(2, state, {"s": 2})
    ck.wait()
    assert ck.all_steps() == [1, 2]
    assert_same(ck.restore(2, target), state)
    assert (tmp_path / "2.corrupt").is_dir() and junk.is_dir()
    ck.close()


def test_incompatible_target_raises_without_marking_bad(tmp_path, mesh):
    with Checkpointer(tmp_path, keep=3, save_every=1) as ck:
        ck.save(1, {"w": jnp.zeros(4)})
        ck.save(2, {"w": jnp.zeros(4)})
        ck.wait()
        wrong = {"w": jax.ShapeDtypeStruct((5,), jnp.float32, sharding=M.batch_sharding(mesh, ndim=1))}
        with pytest.raises(RuntimeError, match="None of the checkpoints"):
            ck.restore_latest(wrong)
        assert ck.save(3, {"w": jnp.zeros(4)})
        ck.wait()
        assert ck.all_steps() == [1, 2, 3]
        assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]


def test_metadata_falls_back_past_damaged_meta(tmp_path, caplog):
    with Checkpointer(tmp_path, keep=3, save_every=1) as ck:
        ck.save(1, {"w": jnp.zeros(2)}, {"model": "a"})
        ck.save(2, {"w": jnp.zeros(2)}, {"model": "b"})
    _garble(tmp_path / "2" / "meta" / "metadata")
    with Checkpointer(tmp_path, keep=3, save_every=1) as ck:
        with caplog.at_level(logging.WARNING, logger="bitjax.run.checkpoint"):
            assert ck.restore_metadata() == {"model": "a"}
        assert "Metadata of checkpoint step 2" in caplog.text
        with pytest.raises(ValueError):  # the garbled JSON does not decode
            ck.restore_metadata(2)
