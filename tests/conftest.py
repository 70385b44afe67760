"""Every test sees 8 emulated CPU devices: set before jax is imported anywhere."""

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

sys.path.insert(0, os.path.dirname(__file__))  # test modules share builders.py (tiny_config, FILES, losses)

import pytest


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tfds data_dir for the whole session: each small corpus is built once."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache per test worker, for this process and the CLI subprocesses
    that tests start (SIGKILL/resume, multi-process, error paths): a test that builds the same tiny program
    as an earlier one (a resumed run, the same config under another name) loads it instead of recompiling
    (the scan/loop round trip: 113 → 68 s of CPU). Executables are deserialized bit-for-bit, so every
    exactness test still compares the same programs' numbers."""
    import jax

    cache = str(tmp_path_factory.mktemp("jax_cache"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_COMPILATION_CACHE_DIR", cache)
        mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        yield cache


@pytest.fixture(scope="session")
def corpus_files():
    """The small stdlib corpus every trainer test trains on (builders.FILES)."""
    from builders import FILES

    return list(FILES)


@pytest.fixture
def make_config(data_dir):
    """builders.tiny_config with this session's tfds data_dir: make_config("a48", steps=6, **{"optim.lr": 1e-3})."""
    from builders import tiny_config

    def make(method="b158", steps=30, **over):
        return tiny_config(method, steps, data_dir=data_dir, **over)

    return make


# The slowest modules first (longest-processing-time-first): xdist's --dist loadscope hands modules out in
# collection order, so the long ones start early and the two workers finish together instead of one idling
# while the other runs a late heavy module. Measured with --durations (2026-12-04); the order of the other
# modules, and of the tests inside every module, is unchanged.
SLOW_FIRST = (
    "test_real_model",
    "test_scan",
    "test_fault_tolerance",
    "test_mamba2_train",
    "test_block_recon",
    "test_ptq",
    "test_trainer",
    "test_convert",
    "test_aot",
    "test_export_hf",
    "test_e2e_qp",
    "test_distill",
    "test_run",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1] if item.module else "", len(rank)))
