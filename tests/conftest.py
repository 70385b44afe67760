"""Every test sees 8 emulated CPU devices: set before jax is imported anywhere."""
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()

sys.path.insert(0, os.path.dirname(__file__))  # test modules share helpers (test_validation → test_trainer)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One tfds data_dir for the whole session: each small corpus is built once."""
    return str(tmp_path_factory.mktemp("tfds"))
