"""Quantizers: pure functions with straight-through gradient rules, a name registry, and recipes."""

from bitjax.quant.activations import (
    absmax_act,
    absmax_codes,
    absmax_v1_act,
    absmean_act,
    absmean_codes,
    topk_absmax_act,
    topk_mask,
)
from bitjax.quant.billm import billm
from bitjax.quant.gptq import gptq, gptq_codes, hessian
from bitjax.quant.int8_matmul import fake_quant_matmul, int8_matmul, integer_forms
from bitjax.quant.recipes import METHODS, Recipe, Rule, get_method, parse_rules, plan, recipe
from bitjax.quant.registry import QuantSpec, get_act_quantizer, get_weight_quantizer
from bitjax.quant.ste import GRADIENT_RULES, rule_derivative, straight_through
from bitjax.quant.weights import (
    binary_mean,
    binary_mean_codes,
    fbi_init,
    fbi_sign,
    onebit,
    onebit_init,
    pb_llm,
    rtn,
    rtn_codes,
    salient_mask,
    sign,
    ternary_absmean,
    ternary_absmean_codes,
)
