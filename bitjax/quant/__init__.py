"""Quantizers: pure functions with straight-through gradient rules, and a name registry."""
from bitjax.quant.gptq import gptq, gptq_codes, hessian
from bitjax.quant.activations import absmax_act, absmax_codes, absmax_v1_act, topk_absmax_act, topk_mask
from bitjax.quant.registry import METHODS, QuantSpec, get_act_quantizer, get_weight_quantizer, method_specs
from bitjax.quant.ste import GRADIENT_RULES, rule_derivative, straight_through
from bitjax.quant.weights import (billm, binary_mean, binary_mean_codes, fbi_init, fbi_sign, onebit,
                                  onebit_init, pb_llm, rtn, rtn_codes, salient_mask, sign,
                                  ternary_absmean, ternary_absmean_codes)
