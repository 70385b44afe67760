"""Post-training quantization methods by name: what `python -m bitjax.ptq --method` selects.

Two kinds, one registry: a layer-wise method (kind 'layer': rtn, gptq, decoupleq, billm) maps a kernel W (in, out)
and its input Hessian H (in, in) to W̃, and bitjax.ptq runs it projection by projection; a block-wise
method (kind 'block': omniquant, efficientqat) learns per decoder block through
bitjax.quant.block_recon, and its `block` (a BlockMethod) says how. bitjax.ptq picks the pass by kind. Names are the QAT recipes' (bitjax.quant.recipes) where they mean the same grid: ``rtn4`` is
``rtn`` with 4 bits, in PTQ as in QAT; ``gptq3`` is ``gptq`` with 3 bits. The bare name takes the bits
separately (``--method rtn --bits 4``). A method's own options (``options``: name → default) reach its
quantize function as keywords; bitjax.ptq's flags of the same names set them (``--act_order``, …).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax

from bitjax.quant import efficientqat, omniquant, weights
from bitjax.quant.billm import billm
from bitjax.quant.block_recon import BlockMethod
from bitjax.quant.decoupleq import decoupleq
from bitjax.quant.gptq import gptq


@dataclasses.dataclass(frozen=True)
class PTQMethod:
    """quantize(w, h, bits, group_size, **options) → W̃ (in, out) (kind 'layer'), or `block` (kind 'block');
    `bits` the widths it takes, `default_bits` the one used when none is given, `grouped` whether it takes
    a group size (one grid per group of input rows), `options` a layer-wise method's own keyword options
    and their defaults."""

    quantize: Callable[..., jax.Array] | None
    bits: tuple[int, ...]
    default_bits: int
    grouped: bool
    doc: str
    options: dict = dataclasses.field(default_factory=dict)
    block: BlockMethod | None = None

    @property
    def kind(self) -> str:
        """'layer' (projection by projection, given H) or 'block' (block reconstruction)."""
        return "layer" if self.block is None else "block"


_METHODS: dict[str, PTQMethod] = {
    "rtn": PTQMethod(
        lambda w, h, bits, group_size: weights.rtn(w, bits, "channel" if group_size is None else int(group_size)),
        bits=tuple(range(2, 9)),
        default_bits=4,
        grouped=True,
        doc="round to nearest on GPTQ's asymmetric min-max grid (ignores H)",
    ),
    "gptq": PTQMethod(
        lambda w, h, bits, group_size, act_order, static_groups: gptq(
            w, h, bits, group_size, act_order=act_order, static_groups=static_groups
        ),
        bits=tuple(range(2, 9)),
        default_bits=4,
        grouped=True,
        doc="GPTQ (Frantar et al. 2023, Alg. 1)",
        # the reference's --act-order and --static-groups, both off by default as there (bitjax.quant.gptq)
        options={"act_order": False, "static_groups": False},
    ),
    "decoupleq": PTQMethod(
        lambda w, h, bits, group_size, iters, act_order, shrink, block_epochs: decoupleq(  # block_epochs: bitjax.ptq
            w, h, bits, group_size, iters=iters, act_order=act_order, shrink=shrink
        ),
        bits=tuple(range(2, 9)),
        default_bits=4,
        grouped=True,
        doc="decoupleQ (Guo et al. 2024), layer-wise stage: W ≈ s·C + z, GPTQ for C and closed-form (s, z) alternated",
        # iters: rounds of (GPTQ for C, closed-form (s, z)); act_order on, as run_llama.sh; shrink: the first
        # round's shrunk-grid candidate, as the reference (bitjax.quant.decoupleq); block_epochs > 0 adds the
        # block stage (bitjax.ptq.decoupleq_block_model; the reference runs 4), 0 the layer-wise stage alone
        options={"iters": 4, "act_order": True, "shrink": True, "block_epochs": 0},
    ),
    "billm": PTQMethod(
        lambda w, h, bits, group_size: billm(w, h),  # blocks of 128 input rows, as the reference
        bits=(1,),
        default_bits=1,
        grouped=False,
        doc="BiLLM (Huang et al. 2024): residual binarization of salient columns, two-group split of the rest",
    ),
    "omniquant": PTQMethod(
        None,
        bits=tuple(range(2, 9)),
        default_bits=4,
        grouped=True,
        doc="OmniQuant (Shao et al. 2024): learnable weight clipping trained per block (bitjax.quant.omniquant)",
        block=omniquant.METHOD,
    ),
    "efficientqat": PTQMethod(
        None,
        bits=tuple(range(2, 9)),
        default_bits=4,
        grouped=True,
        doc="EfficientQAT's Block-AP (Chen et al. 2024): weights, s, z trained per block (bitjax.quant.efficientqat)",
        block=efficientqat.METHOD,
    ),
}
METHODS = tuple(_METHODS)
NAMES = (*METHODS, *(f"{m}<k>" for m in METHODS))


def get(name: str) -> PTQMethod:
    """The PTQ method registered as `name` ('rtn', 'gptq', 'decoupleq', 'billm', 'omniquant',
    'efficientqat'); ValueError listing them otherwise."""
    if name not in _METHODS:
        raise ValueError(f"unknown PTQ method {name!r}; choose one of {', '.join(NAMES)} (k = bits)")
    return _METHODS[name]


def options(name: str, given: dict | None = None) -> tuple[tuple[str, object], ...]:
    """Method `name`'s options: its defaults updated by `given` (None values ignored), as sorted (key, value)
    pairs (hashable: a static argument of a jitted quantizer). ValueError for an option it does not take."""
    spec, given = get(name), {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        takes = ", ".join(f"--{k}" for k in spec.options) or "none"
        raise ValueError(f"{name} takes no {', '.join('--' + k for k in unknown)} (its options: {takes})")
    return tuple(sorted({**spec.options, **given}.items()))


def resolve(method: str, bits: int | None = None) -> tuple[str, int]:
    """(registered name, bits) of a method as written: 'rtn4' → ('rtn', 4), ('rtn', 4) → ('rtn', 4),
    ('rtn', None) → ('rtn', 4), 'billm' → ('billm', 1). ValueError for an unknown name, bits the method
    does not take, or bits that contradict the name's ('rtn4' with bits 3)."""
    m = re.fullmatch(r"([a-z_]+?)(\d+)", method or "")
    name, named_bits = (m[1], int(m[2])) if m and m[1] in _METHODS else (method, None)
    spec = get(name)
    if named_bits is not None and bits is not None and bits != named_bits:
        raise ValueError(f"{method} is {named_bits}-bit: drop the bits or use {name}{bits}")
    bits = next(b for b in (named_bits, bits, spec.default_bits) if b is not None)
    if bits not in spec.bits:
        others = " or ".join(n for n, s in _METHODS.items() if bits in s.bits) or "none of them"
        takes = "binarizes (1 bit)" if spec.bits == (1,) else f"takes {spec.bits[0]} to {spec.bits[-1]} bits"
        raise ValueError(f"{name} {takes}; use {others} for {bits} bits")
    return name, bits
