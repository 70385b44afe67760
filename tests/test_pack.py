"""Packing (bitjax.export.pack): exact round trips, HF's own layout, bits per weight at the 1b shapes."""

import numpy as np
import pytest
from flax import nnx

from bitjax.export import pack
from bitjax.models import transformer as T
from bitjax.nn import BitDense
from bitjax.quant import QuantSpec

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("shape", [(8, 3), (7, 5), (1, 1), (13, 2, 3), (256, 64)])
def test_ternary_round_trips(shape):
    codes = RNG.integers(-1, 2, shape).astype(np.int8)
    p2 = pack.pack_ternary_2bit(codes)
    assert p2.dtype == np.uint8 and p2.shape == (-(-shape[0] // 4), *shape[1:])
    np.testing.assert_array_equal(pack.unpack_ternary_2bit(p2, shape[0]), codes)
    p3 = pack.pack_ternary_base3(codes)
    assert p3.shape == (-(-codes.size // 5),) and p3.max() <= 242
    np.testing.assert_array_equal(pack.unpack_ternary_base3(p3, shape), codes)


def test_2bit_layout_written_out():
    # out = 8 → 2 packed rows; row r holds original rows r, r+2, r+4, r+6 in bit pairs 0, 1, 2, 3
    codes = np.array([[-1], [0], [1], [1], [0], [-1], [1], [0]], np.int8)
    t = codes[:, 0].astype(np.int64) + 1
    expect = [t[0] | t[2] << 2 | t[4] << 4 | t[6] << 6, t[1] | t[3] << 2 | t[5] << 4 | t[7] << 6]
    np.testing.assert_array_equal(pack.pack_ternary_2bit(codes)[:, 0], expect)
    # base 3: the first byte is Σ t_k 3^k over the first five codes
    assert pack.pack_ternary_base3(codes)[0] == sum(int(t[k]) * 3**k for k in range(5))


@pytest.mark.parametrize("shape", [(4, 8), (3, 13), (5, 1)])
def test_sign_round_trip(shape):
    codes = np.where(RNG.random(shape) < 0.5, -1, 1).astype(np.int8)
    p = pack.pack_signs(codes)
    assert p.shape == (shape[0], -(-shape[1] // 8))
    np.testing.assert_array_equal(pack.unpack_signs(p, shape[1]), codes)
    assert pack.pack_signs(np.array([[1, -1, -1, 1, -1, -1, -1, -1, 1]], np.int8))[0, 0] == 0b1001


def test_bad_codes_are_refused():
    with pytest.raises(ValueError, match="ternary 2-bit packing needs codes"):
        pack.pack_ternary_2bit(np.array([[2]], np.int8))
    with pytest.raises(ValueError, match="1-bit sign packing"):
        pack.pack_signs(np.array([[0, 1]], np.int8))


def test_2bit_is_transformers_pack_weights():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.integrations.bitnet import pack_weights

    # (unpack_weights is torch.compile'd, ~9 s here; tests/test_export_hf.py runs it via from_pretrained)
    for shape in [(64, 24), (12, 5)]:
        codes = RNG.integers(-1, 2, shape).astype(np.int8)
        ref = pack_weights(torch.from_numpy(codes.astype(np.float32))).numpy()
        np.testing.assert_array_equal(pack.pack_ternary_2bit(codes), ref)


@pytest.mark.parametrize(
    "weight, scheme",
    [
        ("ternary_absmean", "2bit"),
        ("ternary_absmean", "base3"),
        ("binary_mean", "1bit"),
        ("fbi", "1bit"),
        ("onebit", "1bit"),
    ],
)
def test_packed_layer_reconstructs_the_layers_wtilde(weight, scheme):
    layer = BitDense(40, 24, quant=QuantSpec(weight), rngs=nnx.Rngs(0))
    p = pack.pack_layer({k: np.asarray(v) for k, v in layer.integer_weights().items()}, scheme)
    codes = pack.unpack_layer(p).T.astype(np.float32)  # (in, out)
    if weight in ("ternary_absmean", "binary_mean"):
        w = codes * p["scale"]
    elif weight == "fbi":
        w = p["alpha"][:, None] * codes + p["beta"][:, None]
    else:
        w = p["g"][:, None] * codes * p["h"][None, :]
    np.testing.assert_allclose(w, np.asarray(layer.quantized_kernel()), rtol=1e-6, atol=1e-7)


def one_b_shapes():
    """(in, out) of one layer's projections at the 1b preset (Llama 3.2 1B shapes)."""
    c = T.SIZES["1b"]
    hd = c["d_model"] // c["n_heads"]
    d, f, q, kv = c["d_model"], c["mlp_dim"], c["n_heads"] * hd, c["n_kv_heads"] * hd
    return [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]


@pytest.mark.slow
def test_bits_per_weight_at_the_1b_shapes():
    """2-bit ≤ 2.01 and base-3 ≤ 1.61 bits/weight including γ (float32, one per matrix); 1-bit ≤ 1.01
    with binary_mean's β; ≤ 1.13 with FBI's per-input α, β (2 float32 per input row: 0.125 bits at
    k_proj's 512 outputs)."""
    got = {}
    for scheme, bound, spec in [
        ("2bit", 2.01, "ternary"),
        ("base3", 1.61, "ternary"),
        ("1bit", 1.01, "binary"),
        ("1bit", 1.13, "fbi"),
    ]:
        total_bits = total_w = 0
        shapes = one_b_shapes()
        for n_in, n_out in sorted(set(shapes)):  # each distinct shape once, weighted by its count
            count = shapes.count((n_in, n_out))
            if spec == "ternary":
                iw = {"codes": RNG.integers(-1, 2, (n_in, n_out), dtype=np.int8), "scale": np.ones((1, 1))}
            else:
                iw = {"codes": np.where(RNG.random((n_in, n_out)) < 0.5, -1, 1).astype(np.int8)}
                iw.update(
                    {"scale": np.ones((1, 1))} if spec == "binary" else {"alpha": np.ones(n_in), "beta": np.ones(n_in)}
                )
            p = pack.pack_layer(iw, scheme)
            bpw = pack.bits_per_weight(p)
            assert bpw <= bound, (scheme, spec, (n_in, n_out), bpw)
            total_bits += count * bpw * n_in * n_out
            total_w += count * n_in * n_out
        got[(scheme, spec)] = total_bits / total_w
    print("bits/weight at 1b shapes:", got)
    assert got[("2bit", "ternary")] < 2.0001 and got[("base3", "ternary")] < 1.6001


def test_a_missing_optional_dependency_names_its_extra(monkeypatch):
    import sys

    from bitjax.export.hf import require

    monkeypatch.setitem(sys.modules, "gguf", None)  # None in sys.modules makes `import gguf` fail
    with pytest.raises(ImportError, match=r"pip install 'bitjax\[gguf\]'"):
        require("gguf", "gguf")
    from bitjax.export.gguf import save_gguf

    with pytest.raises(ImportError, match=r"bitjax\[gguf\]"):
        save_gguf(None, None, "x.gguf")
