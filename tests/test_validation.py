"""Bad input of every class fails early, with a message naming the field and the fix."""

import os
import subprocess
import sys

import pytest
from builders import tiny_config

from bitjax import config as config_lib
from bitjax.run import config as train_config
from bitjax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize(
    "override, message",
    [
        ({"model.quant.rules": "*_proj: weight=ternery"}, r"config.model.quant.*ternery"),
        ({"model.quant.rules": "*_proj: act=absmax99x"}, r"config.model.quant.*absmax99x"),
        ({"model.quant.grad": "ste"}, r"config.model.quant.grad.*ste"),
        ({"model.activation": "gelu2"}, r"config.model.activation"),
        ({"model.n_heads": 6}, r"config.model.n_heads|config.model.n_kv_heads"),
        ({"optim.schedule": "cosin"}, r"config.optim.schedule"),
        ({"mesh.tensor": 3}, r"config.mesh"),
        ({"log_every": 0}, r"config.log_every"),
        ({"eval_evry": 5}, r"config: unknown field\(s\) \['eval_evry'\]"),
        ({"data.tokeniser": "byte"}, r"config\.data: unknown field\(s\) \['tokeniser'\]"),
    ],
)
def test_more_bad_fields_name_themselves(override, message, data_dir):
    with pytest.raises(ValueError, match=message):
        trainer.Setup(tiny_config("b158", data_dir=data_dir, **override))


def test_bad_data_path_is_reported_before_training(data_dir, tmp_path):
    cfg = tiny_config("fp", data_dir=data_dir)
    cfg.data.paths = (str(tmp_path / "missing" / "*.txt"),)
    with pytest.raises(ValueError, match=r"missing"):
        trainer.train(cfg, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()  # nothing created for a run that cannot start


def test_nonfinite_skip_counts_and_stops_after_the_limit(data_dir, tmp_path):
    cfg = tiny_config(
        "fp", steps=20, data_dir=data_dir, **{"optim.lr": 1e30, "optim.grad_clip": 0.0, "max_skipped_steps": 3}
    )
    with pytest.raises(FloatingPointError, match=r"steps skipped for non-finite values"):
        trainer.train(cfg, str(tmp_path))


def test_nonfinite_stop_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    cfg = tiny_config(
        "fp",
        steps=20,
        data_dir=data_dir,
        **{"optim.lr": 1e30, "optim.grad_clip": 0.0, "nonfinite": "stop", "checkpoint_every": 1},
    )
    with pytest.raises(FloatingPointError, match=r"non-finite loss or gradient at step \d+.*intact"):
        trainer.train(cfg, str(tmp_path))
    assert [d for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()]


def test_skip_policy_keeps_params_finite(data_dir, tmp_path):
    import jax
    import numpy as np

    cfg = tiny_config("fp", steps=20, data_dir=data_dir, **{"optim.lr": 1e30, "optim.grad_clip": 0.0})
    setup = trainer.Setup(cfg)
    state = setup.init_fn(jax.random.key(0))
    for step in range(4):
        state, _m = setup.train_step(state, setup.train_batch(step))
    assert int(state["skipped"]) >= 1
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_unknown_override_key_is_rejected_by_the_cli(tmp_path):
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bitjax.main",
            "--config",
            "configs/transformer.py:quant=b158",
            "--config.modle.d_model=64",
            f"--workdir={tmp_path}",
        ],
        check=False,  # the test expects the CLI to fail
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode != 0 and "modle" in p.stderr


def test_config_argument_parsing():
    a = config_lib.parse_arg("quant=a48,size=tiny,steps=12", quant="b158", size="tiny", steps=0)
    assert (a.quant, a.size, a.steps) == ("a48", "tiny", 12)
    with pytest.raises(ValueError, match=r"unknown config argument 'qaunt'"):
        config_lib.parse_arg("qaunt=fp", quant="b158")


def test_distributed_settings_must_be_complete(monkeypatch):
    from bitjax.train import distributed

    for var in ("BITJAX_COORDINATOR", "BITJAX_NUM_PROCESSES", "BITJAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="number of processes"):
        distributed.initialize("localhost:1234")
    with pytest.raises(ValueError, match=r"process id 2 is not in \[0, 2\)"):
        distributed.initialize("localhost:1234", 2, 2)
    distributed.initialize()  # nothing set: single process, a no-op


def test_cli_overrides_reach_optional_and_recipe_fields(monkeypatch):
    """Fields whose default is None (head_dim, quant.stage2_frac) and recipe rules are settable by flag."""
    from absl import flags
    from ml_collections import config_flags

    from bitjax.models import transformer

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    argv = [
        "prog",
        f"--config={ROOT}/configs/transformer.py:quant=a48",
        "--config.model.head_dim=16",
        "--config.model.vocab_size=512",
        "--config.model.quant.stage2_frac=0.5",
        "--config.model.quant.rules=*_proj: weight=rtn4, weight.granularity=group8; o_proj: act.keep=0.25",
    ]
    monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
    fv(argv)
    c = fv.config
    assert (c.model.head_dim, c.model.vocab_size, c.model.quant.stage2_frac) == (16, 512, 0.5)
    table = transformer.quant_table(c.model)
    assert (table["q_proj"].weight, table["q_proj"].act, table["q_proj"].weight_options) == (
        "rtn4",
        "absmean4",
        (("granularity", "group8"),),
    )
    assert (table["o_proj"].act, table["o_proj"].act_options) == ("topk_absmax8", (("keep", 0.25),))
    assert [s for s, _ in transformer.stage_configs(c.model, 10)] == [0, 5]
    transformer.validate_config(c.model)
    c.model.quant.rules = "o_proj: act.keep"
    with pytest.raises(ValueError, match=r"config\.model\.quant\.rules=.*'act\.keep' is not key=value"):
        transformer.validate_config(c.model)


# ---------------------------------------------------------------- the CLI, as a user types it (issue 14)
def main_cli(workdir, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bitjax.main",
            "--config",
            "configs/transformer.py:quant=b158,size=tiny",
            f"--workdir={workdir}",
            *args,
        ],
        check=False,  # callers assert on the return code and stderr
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_one_line_error(p, message):
    assert p.returncode == 2, p.stderr[-3000:]
    lines = [l for l in p.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.modle.d_model=64"], """unknown config field 'modle' Did you mean "model" instead of "modle"?"""),
        (["--config", "configs/transformer.py:quant=b158,size=huge"], "unknown size 'huge'; choose one of"),
        (["--config.total_steps=abc"], "--config.total_steps=abc"),
        (["--config.data.eval_batches=0"], "config.data.eval_batches=0 is invalid"),
        (
            ["--config.distill.teacher_workdir=runs/no_such_teacher"],
            "config.distill.teacher_workdir='runs/no_such_teacher' is invalid: holds no checkpoints/",
        ),
        (["--config.distill.loss=mse"], "config.distill.loss='mse' is invalid: choose one of ('ce', 'kl')"),
    ],
)
def test_cli_user_errors_are_one_line_and_exit_2(args, message, tmp_path):
    p = main_cli(tmp_path / "wd", *args)
    assert_one_line_error(p, message)
    assert not (tmp_path / "wd").exists()


TINY = [
    "--config.batch_size=8",
    "--config.seq_len=32",
    "--config.model.d_model=32",
    "--config.model.n_layers=1",
    "--config.model.mlp_dim=64",
    "--config.data.name=text_files",
    "--config.data.eval_batches=1",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_data", "matches no file"),
        ("group7", "group size 7 does not divide the input dim 32"),
        ("workdir_is_a_file", "is a file, not a directory"),
        ("latin1", "not valid UTF-8"),
    ],
)
def test_cli_data_model_and_workdir_errors_are_one_line(case, message, data_dir, tmp_path):
    from builders import FILES

    paths = repr(tuple(FILES))
    wd = tmp_path / "wd"
    extra = []
    if case == "missing_data":
        paths = str(tmp_path / "nothing" / "*.txt")
    elif case == "group7":
        extra = ["--config.model.quant.rules=*_proj: weight.granularity=group7"]
    elif case == "workdir_is_a_file":
        wd.write_text("my notes")
    elif case == "latin1":
        (tmp_path / "notes.txt").write_bytes("café au lait, s'il vous plaît. ".encode("latin-1") * 50)
        paths = str(tmp_path / "notes.txt")
    p = main_cli(wd, *TINY, f"--config.data.paths={paths}", f"--config.data.data_dir={data_dir}", *extra)
    assert_one_line_error(p, message)
    assert wd.is_file() if case == "workdir_is_a_file" else not wd.exists()


def test_a_stored_config_from_before_a_field_existed_still_validates():
    """Runs saved before a trainer/data/model field was added load with that field's default."""
    from bitjax.run import mesh as mesh_lib

    stored = tiny_config("b158").to_dict()
    del stored["max_consecutive_skips"], stored["data"]["encoding"], stored["model"]["quant"]["stage1"]
    stored["seed"] = 7
    c = train_config.with_defaults(stored)
    assert (c.max_consecutive_skips, c.data.encoding, c.model.quant.stage1, c.seed) == (10, "utf-8", "", 7)
    train_config.validate(c, mesh_lib.make_mesh(c.mesh))
    stored["model"]["quant"]["act_inner"] = "absmax8"  # a field that no longer exists is still named
    with pytest.raises(ValueError, match="act_inner"):
        train_config.validate(train_config.with_defaults(stored), mesh_lib.make_mesh(c.mesh))


def test_a_stored_config_has_its_tuple_fields_back_as_tuples():
    """JSON stores data.paths as a list; restored, it is a tuple again as in a fresh config, since
    ml_collections refuses `--config.data.paths=F` on a list field (a config built on a stored one, as
    configs/convert_b158.py, must still take it)."""
    import json

    stored = json.loads(json.dumps(tiny_config("fp").to_dict()))
    stored["data"]["paths"] = ["a.txt", "b/*.md"]
    assert train_config.with_defaults(stored).data.paths == ("a.txt", "b/*.md")
