"""Flax NNX layers built from the quantizers."""

from bitjax.nn.bitdense import BitDense, Dense
from bitjax.nn.norms import LayerNorm, RMSNorm, make_norm
from bitjax.nn.params import QuantState, param, quant_state
