"""kth_largest (bit-pattern bisection) vs numpy's sort and jax's top_k."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitjax.quant.select import kth_largest


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 4), d=st.integers(1, 40), data=st.data(), seed=st.integers(0, 9999))
def test_matches_sorted_order(rows, d, data, seed):
    k = data.draw(st.integers(1, d))
    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_normal((rows, d))).astype(np.float32)
    a[:, : d // 3] = np.round(a[:, : d // 3], 1)  # plenty of ties
    expect = -np.sort(-a, axis=-1)[:, k - 1 : k]
    np.testing.assert_array_equal(np.asarray(kth_largest(jnp.asarray(a), k)), expect)


def test_equals_top_k_including_zeros_inf_and_tiny_values():
    a = jnp.asarray([[0.0, 0.0, 1e-45, 3.0, np.inf, 2.0], [5.0, 5.0, 5.0, 0.0, 1e30, 1e-38]], jnp.float32)
    for k in range(1, 7):
        np.testing.assert_array_equal(np.asarray(kth_largest(a, k)), np.asarray(jax.lax.top_k(a, k)[0][:, -1:]))


def test_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be in"):
        kth_largest(jnp.ones((2, 3)), 4)
