"""1.58-bit conversion of a pretrained fp run (issue 28 item 6): init_from across BitDistill's SubLN insertion,
`bitjax.convert` (b158 without training) against a numpy restatement of the ternary weights, and the
continued QAT + logits distillation of configs/convert_b158.py with a λ warm-up: loss finite and falling,
resume bit-exact."""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest
from builders import FILES, losses, tiny_config
from flax import nnx

from bitjax import convert, errors
from bitjax.run import plan as plan_lib
from bitjax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def np_ternary(w):
    """BitNet b1.58 eq. 1–3: γ = mean|W|, W̃ = clip(round(W/γ), −1, 1)·γ."""
    g = max(np.abs(w).mean(), 1e-5)
    return np.clip(np.round(w / g), -1, 1) * g


@pytest.fixture(scope="module")
def fp_run(data_dir, tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("fp") / "run")
    trainer.train(tiny_config("fp", steps=6, data_dir=data_dir, **{"optim.warmup_steps": 1}), wd)
    return wd


def projections(params, layer):
    at, mlp = params["layers"][layer]["self_attn"], params["layers"][layer]["mlp"]
    return {n: np.asarray((at if n in PROJ[:4] else mlp)[n]["kernel"]) for n in PROJ}


# ---------------------------------------------------------------- init_from across the SubLN insertion
def test_init_from_an_fp_run_inserts_fresh_sub_norms_and_nothing_else(fp_run, data_dir):
    _, src = plan_lib.restore_one_device(fp_run)
    over = {"optim.warmup_steps": 0, "init_from": fp_run}
    setup = trainer.Setup(tiny_config("b158", steps=2, data_dir=data_dir, **{"model.sub_norm": True}, **over))
    fresh = setup.init_fn(jax.random.key(0))["params"]
    params, added = trainer.params_from_run(fp_run, setup, fresh)
    assert sorted(added) == sorted(
        f"layers.{i}.{m}.scale" for i in range(2) for m in ("self_attn.attn_sub_norm", "mlp.ffn_sub_norm")
    )
    for i in range(2):
        assert np.all(np.asarray(params["layers"][i]["self_attn"]["attn_sub_norm"]["scale"]) == 1.0)
        assert np.all(np.asarray(params["layers"][i]["mlp"]["ffn_sub_norm"]["scale"]) == 1.0)
        for name, w in projections(params, i).items():
            np.testing.assert_array_equal(w, projections(src, i)[name])
    np.testing.assert_array_equal(params["embed_tokens"]["embedding"], src["embed_tokens"]["embedding"])
    # without fresh parameters (or for parameters that are no sub-norm) the old refusal stands, naming them
    with pytest.raises(errors.UserError, match=r"lacks or adds layers\.0\.mlp\.ffn_sub_norm\.scale"):
        trainer.params_from_run(fp_run, setup, None)
    # learned quantizer scales the fp run lacks are initialised from its kernels (values: tests/test_paretoq.py)
    fbi = trainer.Setup(tiny_config("fbi", steps=2, data_dir=data_dir, **over))
    _, added = trainer.params_from_run(fp_run, fbi, fbi.init_fn(jax.random.key(0))["params"])
    assert {"layers.0.self_attn.q_proj.qparams.alpha", "layers.0.self_attn.q_proj.qparams.beta"} <= set(added)
    wide = trainer.Setup(tiny_config("b158", steps=2, data_dir=data_dir, **{"model.mlp_dim": 96}, **over))
    with pytest.raises(errors.UserError, match=r"its parameters differ from this run's model"):
        trainer.params_from_run(fp_run, wide, wide.init_fn(jax.random.key(0))["params"])


# ---------------------------------------------------------------- (a) b158 without training
def test_convert_writes_a_b158_run_of_the_fp_weights(fp_run, tmp_path):
    out = str(tmp_path / "b158")
    res = convert.run(fp_run, out, eval_text=[FILES[0]])
    plan, params = plan_lib.restore_one_device(out)  # an ordinary run: what bitjax.eval / sample read
    assert plan.config.model.quant.method == "b158" and not plan.config.model.sub_norm
    assert plan.quant_table["q_proj"] == "weight=ternary_absmean, act=absmax8"
    _, src = plan_lib.restore_one_device(fp_run)
    model = plan.model(params)
    for i in range(2):  # latent weights = the fp run's; the layer computes with b1.58's ternary W̃
        np.testing.assert_array_equal(projections(params, i)["o_proj"], projections(src, i)["o_proj"])
        w = projections(src, i)["down_proj"]
        got = np.asarray(model.layers[i].mlp.down_proj.quantized_kernel())
        np.testing.assert_allclose(got, np_ternary(w), rtol=1e-6, atol=1e-8)
    with open(os.path.join(out, "ptq.json")) as f:
        saved = json.load(f)
    assert saved["method"] == "b158" and saved["eval_data"] == [FILES[0]] and saved["sub_norm_inserted"] == []
    assert np.isfinite(saved["eval_bpb"]) and np.isfinite(saved["fp_eval_bpb"]) and saved == json.loads(json.dumps(res))
    assert saved["eval_bpb"] != saved["fp_eval_bpb"]  # the quantizers are in force
    # with --sub_norm the sub-norms come in at scale 1, listed
    out2 = str(tmp_path / "b158_subln")
    res2 = convert.run(fp_run, out2, sub_norm=True, eval_text=[FILES[0]])
    assert len(res2["sub_norm_inserted"]) == 4
    plan2, params2 = plan_lib.restore_one_device(out2)
    assert plan2.config.model.sub_norm
    assert np.all(np.asarray(params2["layers"][1]["self_attn"]["attn_sub_norm"]["scale"]) == 1.0)


def test_convert_refuses_bad_input_in_one_line(fp_run, tmp_path, capsys):
    for argv, msg in (
        (["--workdir", fp_run, "--out", fp_run], "is --workdir"),
        (["--workdir", fp_run, "--out", str(tmp_path / "o"), "--method", "fp"], "--method 'fp'"),
        (["--workdir", str(tmp_path / "none"), "--out", str(tmp_path / "o")], "holds no checkpoints"),
    ):
        with pytest.raises(SystemExit) as e:
            convert.main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err
    assert not os.path.exists(tmp_path / "o")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes").write_text("mine")
    with pytest.raises(errors.UserError, match="not a bitjax.convert output"):
        convert.run(fp_run, str(tmp_path / "busy"), eval_text=[FILES[0]])
    assert (tmp_path / "busy" / "notes").read_text() == "mine"


# ---------------------------------------------------------------- (b) continued QAT + KD with a warm-up
def convert_config(src, **arg):
    spec = importlib.util.spec_from_file_location("convert_b158", os.path.join(ROOT, "configs", "convert_b158.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(",".join(f"{k}={v}" for k, v in {"src": src, **arg}.items()))


@pytest.mark.slow
def test_qat_with_distillation_and_warmup_from_the_fp_run(fp_run, tmp_path, capsys):
    cfg = convert_config(fp_run, steps=10, warmup=3, batch=8, seq=32, lr=3e-3)
    cfg.log_every, cfg.eval_every, cfg.checkpoint_every, cfg.data.eval_batches = 1, 0, 2, 1
    assert cfg.model.quant.method == "b158" and cfg.model.sub_norm and cfg.model.quant.warmup_steps == 3
    assert cfg.init_from == cfg.distill.teacher_workdir == os.path.abspath(fp_run)
    trainer.train(cfg, str(tmp_path / "a"))
    out = capsys.readouterr().out
    assert "initialised fresh (absent from" in out and "layers.1.mlp.ffn_sub_norm.scale" in out
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    la = [r["train_loss"] for r in rows]
    assert len(la) == 10 and all(np.isfinite(la)) and all(np.isfinite(r["distill_loss"]) for r in rows)
    assert np.mean(la[-3:]) < la[3], la  # falling once the warm-up is over (λ = 1 from step 3)
    # preempted in the middle of the warm-up (after step 2: λ = 2/3 next), resumed: bitwise the same
    trainer.train(cfg, str(tmp_path / "b"), stop_after=2)
    trainer.train(cfg, str(tmp_path / "b"))
    assert losses(str(tmp_path / "b")) == losses(str(tmp_path / "a"))
    _, pa = plan_lib.restore_one_device(str(tmp_path / "a"))
    _, pb = plan_lib.restore_one_device(str(tmp_path / "b"))
    for x, y in zip(jax.tree.leaves(nnx.State(pa)), jax.tree.leaves(nnx.State(pb))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
