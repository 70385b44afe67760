"""Recipes: the rule syntax, how rules fold into a role's spec, methods, and the stage plan."""

import pytest

from bitjax.quant import METHODS, QuantSpec, Recipe, parse_rules, plan, recipe

ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed", "lm_head")


def test_parse_rules_syntax():
    rules = parse_rules(" o_proj|down_proj : act=topk_absmax8, act.keep=0.25 ; embed: weight=rtn4, weight.sym=True")
    assert [r.pattern for r in rules] == ["o_proj|down_proj", "embed"]
    assert rules[0].updates == (("act", "topk_absmax8"), ("act.keep", 0.25))
    assert rules[1].updates == (("weight", "rtn4"), ("weight.sym", True))
    assert parse_rules("") == parse_rules(None) == ()
    for bad, match in [
        ("o_proj act=absmax8", "is not 'PATTERN: key=value"),
        ("o_proj: ", "sets nothing"),
        ("o_proj: bits=4", "unknown key 'bits'"),
        ("o_proj: act.=3", "unknown key"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_rules(bad)


def test_rules_fold_in_order_and_a_new_quantizer_resets_its_options():
    r = Recipe(
        parse_rules(
            "*_proj: weight=ternary_absmean, act=absmax8; o_proj: act=topk_absmax8, act.keep=0.5;"
            " o_proj: act.keep=0.25; down_proj|up_proj: act=absmax4, grad=clipped;"
            " up_proj: norm=rms"
        ),
        grad="approx_sign",
    )
    assert r.spec("q_proj") == QuantSpec("ternary_absmean", "absmax8", "approx_sign")
    assert r.spec("o_proj") == QuantSpec(
        "ternary_absmean", "topk_absmax8", "approx_sign", act_options=(("keep", 0.25),)
    )
    assert r.spec("down_proj") == QuantSpec("ternary_absmean", "absmax4", "clipped")
    assert r.spec("up_proj") == QuantSpec("ternary_absmean", "absmax4", "clipped", norm="rms")
    assert r.spec("embed") == QuantSpec(grad="approx_sign") and r.spec("embed").is_fp
    reset = Recipe(parse_rules("o_proj: act=topk_absmax8, act.keep=0.5; o_proj: act=absmax8"))
    assert reset.spec("o_proj") == QuantSpec(act="absmax8")  # 'keep' does not leak onto absmax8


def test_invalid_spec_and_unmatched_rule_are_named():
    with pytest.raises(ValueError, match=r"rule 'o_proj: act=absmax8, act.keep=0.5' gives role 'o_proj'.*no option"):
        Recipe(parse_rules("o_proj: act=absmax8, act.keep=0.5")).spec("o_proj")
    with pytest.raises(ValueError, match=r"'mlp_proj: act=absmax8' matches no layer.*q_proj, k_proj"):
        Recipe(parse_rules("mlp_proj: act=absmax8")).table(ROLES)


def test_methods_as_the_papers_define_them():
    b158 = QuantSpec("ternary_absmean", "absmax8")
    assert recipe("b158").table(ROLES) == {r: (QuantSpec() if r in ("embed", "lm_head") else b158) for r in ROLES}
    a48 = recipe("a48")
    assert {r: a48.spec(r).act for r in ROLES[:7]} == {
        "q_proj": "absmean4",
        "k_proj": "absmean4",
        "v_proj": "absmean4",
        "o_proj": "topk_absmax8",
        "gate_proj": "absmean4",
        "up_proj": "absmean4",
        "down_proj": "absmax8",
    }
    assert dict(a48.spec("o_proj").act_options) == {"keep": 0.5}
    assert recipe("bitnet").spec("v_proj") == QuantSpec("binary_mean", "absmax_v1_8", norm="layer")
    assert recipe("fbi").spec("up_proj") == QuantSpec("fbi")
    assert recipe("bimamba").spec("in_proj") == QuantSpec("fbi") and recipe("bimamba").spec("q_proj").is_fp
    assert recipe("b158", "o_proj: act=absmax4").spec("o_proj") == QuantSpec("ternary_absmean", "absmax4")
    assert "billm" not in METHODS  # BiLLM is post-training (bitjax.quant.billm), not a QAT recipe
    with pytest.raises(ValueError, match="unknown quantization method 'b159'"):
        recipe("b159")


def test_stage_plan():
    assert plan("a48", total_steps=1000) == [(0, "b158"), (950, "a48")]
    assert plan("a48", stage2_frac=0.5, total_steps=11) == [(0, "b158"), (6, "a48")]
    assert plan("a48", stage1="none", total_steps=1000) == [(0, "a48")]
    assert plan("a48", stage2_frac=0.0, total_steps=1000) == [(0, "a48")]
    assert plan("b158", total_steps=1000) == [(0, "b158")]
    assert plan("fbi", stage1="fp", stage2_frac=0.2, total_steps=10) == [(0, "fp"), (2, "fbi")]
    with pytest.raises(ValueError, match="stage2_frac"):
        plan("b158", stage1="fp", total_steps=10)  # b158 has no default switch point
