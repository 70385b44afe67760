"""bitjax.ptq on a tiny trained FP run: rtn / gptq / billm write a run that loads and evaluates, GPTQ's
layer error is at most RTN's, kernels lie on their grid, and nothing on disk is lost to a bad command."""

import json
import math
import os

import jax
import numpy as np
import pytest
from builders import reload_eval_loss, tiny_config

from bitjax import ptq
from bitjax.quant import ptq_methods
from bitjax.run import plan as plan_lib
from bitjax.train import trainer

CALIB = 8


@pytest.fixture(scope="module")
def fp_run(data_dir, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("fp"))
    trainer.train(tiny_config("fp", steps=30, data_dir=data_dir), wd)
    return wd


@pytest.fixture(scope="module")
def outs(fp_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("ptq")
    return {
        name: (str(root / name), ptq.run(fp_run, method, bits, str(root / name), calib_sequences=CALIB))
        for name, method, bits in (
            ("rtn2", "rtn", 2),
            ("gptq2", "gptq", 2),
            ("decoupleq2", "decoupleq", 2),
            ("billm", "billm", None),
        )
    }


def kernels(params):
    for i, layer in sorted(params["layers"].items()):
        for block, names in (
            ("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp", ("gate_proj", "up_proj", "down_proj")),
        ):
            for n in names:
                yield f"layers.{i}.{block}.{n}.kernel", np.asarray(layer[block][n]["kernel"])


@pytest.mark.parametrize("name", ["rtn2", "gptq2", "decoupleq2", "billm"])
def test_ptq_writes_a_run_that_loads_and_evaluates(outs, fp_run, name):
    out, _result = outs[name]
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert {
        "method",
        "bits",
        "group_size",
        "calib_sequences",
        "eval_loss",
        "eval_bpb",
        "fp_eval_loss",
        "fp_eval_bpb",
        "layer_errors",
    } <= set(saved)
    assert saved["calib_sequences"] == CALIB and len(saved["layer_errors"]) == 2 * 7
    assert math.isfinite(saved["eval_bpb"]) and saved["eval_bpb"] > 0
    # the written checkpoint is what was evaluated: loading it (as bitjax.sample/eval do) gives the same loss
    plan, params, loss = reload_eval_loss(out)
    assert plan.config.model.quant.method == "fp"
    assert loss == pytest.approx(saved["eval_loss"], rel=1e-5)
    # every projection kernel changed; embeddings and lm_head did not
    _, fp_params = plan_lib.restore_one_device(fp_run)
    for (path, q), (_, w) in zip(kernels(params), kernels(fp_params)):
        assert not np.array_equal(q, w), path
    for key in ("embed_tokens", "lm_head"):
        for a, b in zip(jax.tree.leaves(params[key]), jax.tree.leaves(fp_params[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name, levels", [("rtn2", 4), ("gptq2", 4), ("decoupleq2", 4), ("billm", None)])
def test_quantized_kernels_are_on_their_grid(outs, name, levels):
    _, params = plan_lib.restore_one_device(outs[name][0])
    for path, q in kernels(params):
        per_channel = max(len(np.unique(q[:, o])) for o in range(q.shape[1]))
        if levels is not None:  # k bits per output channel: at most 2^k values
            assert per_channel <= levels, path
        else:  # BiLLM: few values per (128-row block, channel) — far fewer than the rows
            assert per_channel < q.shape[0] // 2, path


def test_gptq_layer_error_is_at_most_rtns(outs):
    rtn, gptq = outs["rtn2"][1]["layer_errors"], outs["gptq2"][1]["layer_errors"]
    # layer 0's q/k/v see the embedding alone, so both methods quantize them against the same H
    for name in ("q_proj", "k_proj", "v_proj"):
        key = f"layers.0.self_attn.{name}.kernel"
        assert 0 < gptq[key] <= rtn[key], (key, gptq[key], rtn[key])
    assert outs["gptq2"][1]["eval_loss"] <= outs["rtn2"][1]["eval_loss"]


@pytest.mark.parametrize(
    "args, match",
    [
        (["--method", "awq"], "--method 'awq'"),
        (["--method", "gptq", "--bits", "1"], "--bits 1"),
        (["--method", "billm", "--bits", "3"], "--bits 3"),
        (["--method", "rtn", "--group_size", "5"], "--group_size 5"),
        (["--method", "rtn", "--act_order"], "rtn takes no --act_order (its options: none)"),
        (["--method", "billm", "--static_groups"], "billm takes no --static_groups"),
        (["--method", "gptq", "--static_groups"], "--static_groups fixes the grids of groups: it needs --group_size"),
        (["--method", "decoupleq", "--iters", "-1"], "--iters -1: must be ≥ 0"),
        (["--method", "decoupleq", "--block_epochs", "2", "--capture", "block"], "captures sequentially"),
        (["--method", "omniquant", "--act_order"], "omniquant takes no --act_order"),
        (["--method", "omniquant", "--capture", "block"], "omniquant is block-wise"),
        (["--method", "gptq", "--iters", "2"], "gptq takes no --iters (its options: --act_order, --static_groups)"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(fp_run, tmp_path, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        ptq.main(["--workdir", fp_run, "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and match in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_run_or_a_foreign_out_is_refused_and_kept(fp_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        ptq.main(["--workdir", str(tmp_path / "nope"), "--method", "rtn", "--out", str(tmp_path / "out")])
    assert e.value.code == 2 and "holds no checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        ptq.main(["--workdir", fp_run, "--method", "rtn", "--out", str(mine)])
    assert e.value.code == 2 and "not a bitjax.ptq output" in capsys.readouterr().err
    assert sorted(os.listdir(mine)) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as e:  # --out = the trained run itself
        ptq.main(["--workdir", fp_run, "--method", "rtn", "--out", fp_run])
    assert e.value.code == 2


def test_an_earlier_ptq_output_is_replaced(tmp_path):
    out = str(tmp_path / "out")
    ptq.fresh_out(out)
    os.makedirs(os.path.join(out, "checkpoints", "30"))
    ptq.fresh_out(out)  # its own earlier output: replaced
    assert os.listdir(out) == [ptq.MARKER]


def test_gptq_act_order_static_groups_and_block_capture_from_the_command_line(fp_run, tmp_path):
    out = str(tmp_path / "gptq3")
    flags = ["--group_size", "16", "--act_order", "--static_groups", "--capture", "block"]
    ptq.main(["--workdir", fp_run, "--method", "gptq3", "--calib_sequences", str(CALIB), "--out", out, *flags])
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert saved["options"] == {"act_order": True, "static_groups": True} and saved["capture"] == "block"
    assert math.isfinite(saved["eval_bpb"])
    _, params = plan_lib.restore_one_device(out)
    for path, q in kernels(params):  # static groups: each original 16 input rows share one 3-bit grid
        groups = q.reshape(q.shape[0] // 16, 16, q.shape[1])
        assert max(len(np.unique(groups[g, :, o])) for g in range(len(groups)) for o in range(q.shape[1])) <= 8, path


def test_decoupleq_from_the_command_line_with_groups(fp_run, outs, tmp_path):
    out = str(tmp_path / "dq")
    ptq.main(["--workdir", fp_run, "--method", "decoupleq", "--bits", "2", "--group_size", "16", "--iters", "2", "--shrink"]
             + ["--calib_sequences", str(CALIB), "--out", out])  # fmt: skip
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert saved["method"] == "decoupleq" and saved["options"] == {
        "act_order": True,
        "iters": 2,
        "shrink": True,
        "block_epochs": 0,
    }
    # groups of 16 rows: one (s, z) each, so at most 4 values per group and channel; and below RTN's error
    _, params = plan_lib.restore_one_device(out)
    for path, q in kernels(params):
        groups = q.reshape(q.shape[0] // 16, 16, q.shape[1])
        assert max(len(np.unique(groups[g, :, o])) for g in range(len(groups)) for o in range(q.shape[1])) <= 4, path
    per_channel, rtn = outs["decoupleq2"][1]["layer_errors"], outs["rtn2"][1]["layer_errors"]
    for name in ("q_proj", "k_proj", "v_proj"):  # layer 0's q/k/v: the same H for every method
        key = f"layers.0.self_attn.{name}.kernel"
        assert 0 < per_channel[key] < rtn[key], (key, per_channel[key], rtn[key])


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_group_size_gives_one_grid_per_group_of_input_rows(method):
    kw, kx = jax.random.split(jax.random.key(0))
    w = jax.random.normal(kw, (64, 8))
    h = ptq.hessian(jax.random.normal(kx, (256, 64)))
    q = np.asarray(ptq.quantize_kernel(w, h, method, 2, 16))
    groups = q.reshape(4, 16, 8)  # (group, row in group, output channel)
    assert max(len(np.unique(groups[g, :, o])) for g in range(4) for o in range(8)) <= 4
    assert max(len(np.unique(q[:, o])) for o in range(8)) > 4  # per channel it is not one 2-bit grid


def test_ptq_methods_take_the_qat_recipes_names_and_refuse_unknown_ones():
    # the QAT recipe's name and the bare name with bits are one method; the old command lines resolve as before
    assert ptq_methods.resolve("rtn4") == ptq_methods.resolve("rtn", 4) == ptq_methods.resolve("rtn") == ("rtn", 4)
    assert ptq_methods.resolve("gptq3") == ptq_methods.resolve("gptq", 3) == ("gptq", 3)
    assert ptq_methods.resolve("rtn8", 8) == ("rtn", 8)
    assert ptq_methods.resolve("billm") == ptq_methods.resolve("billm", 1) == ("billm", 1)
    assert ptq_methods.METHODS[:4] == ("rtn", "gptq", "decoupleq", "billm")  # then the block-wise ones
    with pytest.raises(ValueError, match="rtn4 is 4-bit: drop the bits or use rtn3"):
        ptq_methods.resolve("rtn4", 3)
    with pytest.raises(ValueError, match="gptq takes 2 to 8 bits; use billm for 1 bits"):
        ptq_methods.resolve("gptq1")
    with pytest.raises(ValueError, match="billm binarizes"):
        ptq_methods.resolve("billm", 3)
    known = (
        r"choose one of rtn, gptq, decoupleq, billm, omniquant, efficientqat, rtn<k>, gptq<k>, decoupleq<k>, "
        r"billm<k>, omniquant<k>, efficientqat<k> \(k = bits\)"
    )
    for name in ("awq", "awq4", "rtn_4", ""):
        with pytest.raises(ValueError, match=rf"unknown PTQ method '{name}'; {known}"):
            ptq_methods.resolve(name)
    with pytest.raises(ValueError, match=rf"unknown PTQ method 'rtn4'; {known}"):
        ptq_methods.get("rtn4")  # the registry holds the bare names; resolve() reads the bits off


def test_the_qat_recipe_name_writes_the_same_run_as_the_bare_name_with_bits(outs, fp_run, tmp_path):
    out = str(tmp_path / "rtn2")
    assert ptq.run(fp_run, "rtn2", None, out, calib_sequences=CALIB) == outs["rtn2"][1]  # --method rtn --bits 2
    with open(os.path.join(out, "ptq.json")) as a, open(os.path.join(outs["rtn2"][0], "ptq.json")) as b:
        assert a.read() == b.read()


def test_decoupleq_block_stage_trains_scales_and_zeros_on_frozen_codes(fp_run, tmp_path):
    out = str(tmp_path / "dq_block")
    ptq.main(["--workdir", fp_run, "--method", "decoupleq2", "--iters", "1", "--block_epochs", "2"]
             + ["--calib_sequences", str(CALIB), "--out", out])  # fmt: skip
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert saved["options"]["block_epochs"] == 2 and len(saved["layer_errors"]) == 2 * 7
    for i in range(2):  # the block loss (MSE to the unquantized block on the same input) drops with training
        losses = saved["block_errors"][f"layers.{i}"]
        assert 0 < losses["final"] < losses["init"], (i, losses)
    _, params = plan_lib.restore_one_device(out)
    for path, q in kernels(params):  # still 2 bits: s·C + z with C frozen in 4 levels, per channel
        assert max(len(np.unique(q[:, o])) for o in range(q.shape[1])) <= 4, path
    assert math.isfinite(saved["eval_bpb"])
