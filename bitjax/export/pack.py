"""Bit packing of integer weight codes: pure numpy functions, exact round trips.

All functions take torch's (out, in) orientation (HF weight = bitjax kernelᵀ), int8 codes.

    ternary 2-bit (HF transformers' `pack_weights` layout): codes ∈ {−1, 0, 1}, stored t = c + 1 ∈ {0, 1, 2}
        W (out, in) → P uint8 (⌈out/4⌉, in);  P[r, j] = Σ_k t[k·⌈out/4⌉ + r, j] << 2k   (k = 0..3)
        i.e. the output axis is cut in 4 contiguous slabs and slab k sits in bits 2k, 2k+1.
    ternary base-3 (5 trits per byte, 8/5 = 1.6 bits): the row-major flattened codes, padded with 0 to a
        multiple of 5, byte = Σ_k t_{5i+k}·3^k ∈ [0, 242].
    binary 1-bit (sign): codes ∈ {−1, +1} → bit (c > 0), 8 per byte along the input axis, little-endian
        bit order (np.packbits(..., bitorder='little')), rows padded to whole bytes.

:func:`pack_layer` packs a layer's :meth:`BitDense.integer_weights` (codes plus the scales that
reconstruct W̃) and :func:`bits_per_weight` counts payload + scale bits over the weight count.
"""

from __future__ import annotations

import numpy as np

VALUES_PER_BYTE_2BIT = 4
TRITS_PER_BYTE = 5


def _check_codes(codes, allowed, what):
    codes = np.asarray(codes)
    if codes.size and not np.isin(codes, allowed).all():
        raise ValueError(f"{what} packing needs codes in {allowed}; got values {np.unique(codes)[:8]}")
    return codes.astype(np.int8)


# ----------------------------------------------------------------------------- ternary, 2 bits (HF)
def pack_ternary_2bit(codes: np.ndarray) -> np.ndarray:
    """int8 (out, …) in {−1, 0, 1} → uint8 (⌈out/4⌉, …), transformers.integrations.bitnet.pack_weights."""
    codes = _check_codes(codes, (-1, 0, 1), "ternary 2-bit")
    out = codes.shape[0]
    rows = -(-out // VALUES_PER_BYTE_2BIT)
    t = np.zeros((rows * VALUES_PER_BYTE_2BIT, *codes.shape[1:]), np.uint8)
    t[:out] = (codes + 1).astype(np.uint8)  # padding rows hold t = 0 (never read back: unpack trims)
    slabs = t.reshape(VALUES_PER_BYTE_2BIT, rows, *codes.shape[1:])
    packed = np.zeros((rows, *codes.shape[1:]), np.uint8)
    for k in range(VALUES_PER_BYTE_2BIT):
        packed |= slabs[k] << (2 * k)
    return packed


def unpack_ternary_2bit(packed: np.ndarray, out_features: int | None = None) -> np.ndarray:
    """uint8 (R, …) → int8 (out_features or 4R, …): HF's `unpack_weights` (slab k = bits 2k, 2k+1) − 1."""
    packed = np.asarray(packed, np.uint8)
    slabs = [((packed >> (2 * k)) & 3) for k in range(VALUES_PER_BYTE_2BIT)]
    codes = np.concatenate(slabs, axis=0).astype(np.int8) - 1
    return codes[:out_features] if out_features is not None else codes


# ----------------------------------------------------------------------------- ternary, base 3
def pack_ternary_base3(codes: np.ndarray) -> np.ndarray:
    """int8 codes in {−1, 0, 1}, any shape → uint8 (⌈n/5⌉,), 5 trits per byte (row-major order)."""
    codes = _check_codes(codes, (-1, 0, 1), "ternary base-3").reshape(-1)
    n = codes.size
    t = np.ones(-(-n // TRITS_PER_BYTE) * TRITS_PER_BYTE, np.uint8)  # pad with t = 1 (code 0)
    t[:n] = codes + 1
    t = t.reshape(-1, TRITS_PER_BYTE)
    byte = np.zeros(t.shape[0], np.uint16)
    for k in reversed(range(TRITS_PER_BYTE)):  # Horner: ((t4·3 + t3)·3 + …)·3 + t0
        byte = byte * 3 + t[:, k]
    return byte.astype(np.uint8)


def unpack_ternary_base3(packed: np.ndarray, shape) -> np.ndarray:
    """uint8 (⌈n/5⌉,) → int8 codes of `shape` (n = prod(shape))."""
    b = np.asarray(packed, np.uint8).copy()
    t = np.empty((b.size, TRITS_PER_BYTE), np.int8)
    for k in range(TRITS_PER_BYTE):
        t[:, k] = b % 3
        b //= 3
    n = int(np.prod(shape))
    return (t.reshape(-1)[:n] - 1).reshape(shape)


# ----------------------------------------------------------------------------- binary, 1 bit
def pack_signs(codes: np.ndarray) -> np.ndarray:
    """int8 (…, in) in {−1, +1} → uint8 (…, ⌈in/8⌉): bit = (c > 0), little-endian within a byte."""
    codes = _check_codes(codes, (-1, 1), "1-bit sign")
    return np.packbits(codes > 0, axis=-1, bitorder="little")


def unpack_signs(packed: np.ndarray, in_features: int) -> np.ndarray:
    """uint8 (…, ⌈in/8⌉) → int8 (…, in_features) in {−1, +1}."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), axis=-1, count=in_features, bitorder="little")
    return (bits.astype(np.int8) * 2 - 1).astype(np.int8)


# ----------------------------------------------------------------------------- whole layers
SCHEMES = ("2bit", "base3", "1bit")


def pack_layer(integer_weights: dict, scheme: str = "2bit") -> dict:
    """A BitDense's `integer_weights()` (kernel orientation (in, out)) → packed, torch orientation.

    Returns {'packed': uint8, 'shape': (out, in), 'scheme': scheme, **scales} where the scales are the
    layer's own (float32, unchanged: γ for ternary, β for binary_mean, α/β for FBI, g/h for OneBit);
    :func:`unpack_layer` inverts it exactly. Ternary codes take '2bit' or 'base3', binary codes '1bit'.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    codes = np.asarray(integer_weights["codes"]).T  # (in, out) → (out, in)
    if "zero" in integer_weights and integer_weights["zero"] is not None:
        raise ValueError("RTN codes (with a zero point) are not ternary or binary; no packing here")
    pack = {"2bit": pack_ternary_2bit, "base3": pack_ternary_base3, "1bit": pack_signs}[scheme]
    scales = {k: np.asarray(v, np.float32) for k, v in integer_weights.items() if k not in ("codes", "zero")}
    return {"packed": pack(codes), "shape": codes.shape, "scheme": scheme, **scales}


def unpack_layer(packed: dict) -> np.ndarray:
    """:func:`pack_layer`'s output → int8 codes (out, in)."""
    out, n_in = packed["shape"]
    if packed["scheme"] == "2bit":
        return unpack_ternary_2bit(packed["packed"], out)
    if packed["scheme"] == "base3":
        return unpack_ternary_base3(packed["packed"], (out, n_in))
    return unpack_signs(packed["packed"], n_in)


def bits_per_weight(packed: dict) -> float:
    """(payload bytes + scale bytes)·8 / weights of one :func:`pack_layer` result."""
    out, n_in = packed["shape"]
    nbytes = packed["packed"].nbytes + sum(
        v.nbytes for k, v in packed.items() if isinstance(v, np.ndarray) and k != "packed"
    )
    return 8.0 * nbytes / (out * n_in)
