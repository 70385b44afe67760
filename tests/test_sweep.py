"""bitjax.sweep: grid → points, one run per point (skipped when finished, resumed when interrupted),
shards, scheduler commands, results.csv / results.md / plots."""

import csv
import importlib.util
import io
import json
import os
import shlex

import pytest

from bitjax import sweep
from bitjax.train import trainer


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


# A config file as a user writes one: get_config(arg) over the tests' tiny model and local corpus.
CONFIG = """
from bitjax import config as config_lib
from builders import tiny_config

def get_config(arg=None):
    a = config_lib.parse_arg(arg, quant="fp", steps=4)
    c = tiny_config(a.quant, steps=a.steps)
    c.optim.warmup_steps = 1
    return c

def get_sweep():
    return {"quant": ["fp", "b158"], "seed": [0, 1]}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG)
    return str(path)


def test_grid_keys_are_arguments_or_typed_fields(config_file):
    points = sweep.make_points(
        f"{config_file}:steps=3",
        [("quant", ["fp", "b158"]), ("seed", ["0", "1"]), ("config.optim.lr", ["1e-3"])],
        [("log_every", "2")],
    )
    assert [p.name for p in points] == [f"quant={q},seed={s},optim.lr=1e-3" for q in ("fp", "b158") for s in "01"]
    c = points[3].config()
    assert (c.model.quant.method, c.seed, c.optim.lr, c.total_steps, c.log_every) == ("b158", 1, 1e-3, 3, 2)
    assert isinstance(c.seed, int) and isinstance(c.optim.lr, float)  # typed as bitjax.main types them
    # the printed command is bitjax.main's: its flags rebuild the same config
    cmd = shlex.split(points[3].command("runs/sw"))
    assert cmd[:3] == ["python", "-m", "bitjax.main"] and cmd[-1] == "--workdir=runs/sw/" + points[3].name
    assert sweep.build_config(cmd[3:-1]).to_dict() == c.to_dict()


@pytest.mark.parametrize(
    "grid, match", [("nosuch=1,2", "nosuch"), ("optim.lr=fast", "lr"), ("quant=nope", "quant.method")]
)
def test_bad_grid_is_one_line_before_anything_runs(config_file, tmp_path, capsys, grid, match):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--config", config_file, "--grid", grid, "--workdir", str(tmp_path / "sw")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and match in err and err.count("\n") == 1
    assert not (tmp_path / "sw").exists()


def test_shard_and_print_commands(config_file, tmp_path, capsys):
    base = ["--config", config_file, "--workdir", str(tmp_path / "sw"), "--print_commands"]
    sweep.main(base)  # no --grid: the config file's get_sweep(), 2 × 2 points
    all_cmds = capsys.readouterr().out.splitlines()
    assert len(all_cmds) == 4 and all("bitjax.main" in c for c in all_cmds)
    sweep.main(base + ["--shard", "1/3"])
    assert capsys.readouterr().out.splitlines() == [all_cmds[1]]
    with pytest.raises(SystemExit):
        sweep.main(base + ["--shard", "3/3"])
    assert not (tmp_path / "sw").exists()  # printing commands runs nothing


def _fake_run(wd, total, loss, bpb, tok_s):
    """A finished run as the trainer leaves it: checkpoints/<total>/ and metrics.jsonl."""
    os.makedirs(os.path.join(wd, "checkpoints", str(total)))
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for step in range(1, total + 1):
            row = {"step": step, "train_loss": loss + total - step, "tokens_per_s": tok_s}
            if step == total:
                row.update(eval_loss=loss + 0.1, eval_bpb=bpb)
            f.write(json.dumps(row) + "\n")


def test_results_mean_std_over_seeds_and_fp_step_time_ratio(config_file, tmp_path):
    wd = str(tmp_path / "sw")
    points = sweep.make_points(config_file, [("quant", ["fp", "b158"]), ("seed", ["0", "1"])])
    tokens = 8 * 32  # tiny_config's batch × seq_len
    for p, (bpb, tok_s) in zip(points, [(2.0, 1000), (2.2, 1000), (3.0, 500), (3.4, 250)]):
        _fake_run(os.path.join(wd, p.name), 4, 1.0, bpb, tok_s)
    sweep.write_results(points, wd)
    rows = list(csv.DictReader(io.StringIO(read(os.path.join(wd, "results.csv")))))
    assert [r["point"] for r in rows] == [p.name for p in points]
    assert float(rows[2]["step_time_s"]) == pytest.approx(tokens / 500)
    assert [float(r["step_time_vs_fp"]) for r in rows] == pytest.approx([1, 1, 2, 4])  # same seed's fp
    md = read(os.path.join(wd, "results.md"))
    assert "4 of 4 points finished; mean ± std over seed." in md
    assert "step time / fp's (same other grid values)" in md
    assert "| fp | 2 | 1.0000 ± 0.0000 | 1.1000 ± 0.0000 | 2.1000 ± 0.1414 | 1000 ± 0 | 1.000 ± 0.000 |" in md
    assert "| b158 | 2 | 1.0000 ± 0.0000 | 1.1000 ± 0.0000 | 3.2000 ± 0.2828 | 375 ± 177 | 3.000 ± 1.414 |" in md
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    for png in ("loss_curves.png", "eval_bpb.png"):
        assert os.path.exists(os.path.join(wd, png)) == has_mpl


def test_a_distilled_points_train_loss_is_its_label_loss(config_file, tmp_path):
    """With a teacher, train_loss in metrics.jsonl is the distillation objective; the sweep reports the
    label CE (label_loss), the quantity a run without a teacher logs as train_loss."""
    wd = str(tmp_path / "sw")
    (point,) = sweep.make_points(config_file, [("quant", ["b158"])])
    _fake_run(os.path.join(wd, point.name), 4, 1.0, 2.0, 1000)  # the config file's 4 steps
    path = os.path.join(wd, point.name, "metrics.jsonl")
    rows = [json.loads(line) for line in read(path).splitlines()]
    with open(path, "w") as f:
        f.writelines(
            json.dumps({**r, "train_loss": 9.0, "label_loss": r["train_loss"] + 0.5, "distill_loss": 9.0}) + "\n"
            for r in rows
        )
    r = sweep.point_result(point, wd)
    assert r["train_loss"] == pytest.approx(1.5)
    assert r["curve"] == [(s, pytest.approx(5.5 - s)) for s in (1, 2, 3, 4)]


def test_two_point_sweep_trains_skips_when_finished_and_resumes(config_file, data_dir, tmp_path, monkeypatch, capsys):
    wd = str(tmp_path / "sw")
    argv = [
        "--config",
        config_file,
        "--grid",
        "quant=fp,b158",
        "--workdir",
        wd,
        f"--config.data.data_dir={data_dir}",
        "--config.total_steps=5",
    ]
    # fp is preempted after 2 of its 5 steps (the trainer checkpoints and returns): the sweep stops there
    real_train = trainer.train
    monkeypatch.setattr(trainer, "train", lambda config, workdir: real_train(config, workdir, stop_after=2))
    sweep.main(argv)
    assert "quant=fp stopped before step 5" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(wd, "quant=b158"))
    assert "0 of 2 points finished" in read(os.path.join(wd, "results.md"))
    monkeypatch.setattr(trainer, "train", real_train)
    sweep.main(argv)  # the same command resumes fp and trains b158
    out = capsys.readouterr().out
    assert out.count("resumed from") == 1
    for name in ("quant=fp", "quant=b158"):
        with open(os.path.join(wd, name, "metrics.jsonl")) as f:
            assert [json.loads(l)["step"] for l in f] == [1, 2, 3, 4, 5]  # each step once
    rows = list(csv.DictReader(io.StringIO(read(os.path.join(wd, "results.csv")))))
    assert [r["quant"] for r in rows] == ["fp", "b158"] and all(0 < float(r["eval_bpb"]) < 20 for r in rows)
    assert float(rows[1]["step_time_vs_fp"]) > 0
    assert "| b158 | 1 |" in read(os.path.join(wd, "results.md"))

    def no_training(*a, **k):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(trainer, "train", no_training)
    before = read(os.path.join(wd, "results.csv"))
    sweep.main(argv)
    assert capsys.readouterr().out.count("skipped") == 2
    assert read(os.path.join(wd, "results.csv")) == before


@pytest.mark.parametrize(
    "grids, match",
    [
        (["optim.lrr=1e-3"], "config.optim has no field 'lrr' (did you mean 'lr'?)"),
        (["nosuch=1"], "not an argument of"),
        (["seed=0,1", "config.seed=2"], "field seed is set by two --grid flags"),
    ],
)
def test_grid_key_messages_name_the_field(config_file, tmp_path, capsys, grids, match):
    argv = ["--config", config_file, "--workdir", str(tmp_path / "sw")] + [f"--grid={g}" for g in grids]
    with pytest.raises(SystemExit) as e:
        sweep.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and match in err and err.count("\n") == 1, err


def _recorded_fake_run(point, wd):
    """A finished point as run_point leaves it: the fake run plus the config record it was started with."""
    _fake_run(os.path.join(wd, point.name), 4, 1.0, 2.0, 1000)
    with open(os.path.join(wd, point.name, sweep.RECORD), "w") as f:
        json.dump(point.config().to_dict(), f, default=str)


def test_a_rerun_with_changed_flags_is_refused_not_reported_as_new(config_file, tmp_path, capsys):
    wd = str(tmp_path / "sw")
    base = ["--config", config_file, "--grid", "quant=fp", "--workdir", wd]
    (point,) = sweep.make_points(config_file, [("quant", ["fp"])])
    _recorded_fake_run(point, wd)
    sweep.main(base)  # same flags: finished, skipped, reported
    assert "skipped" in capsys.readouterr().out
    before = read(os.path.join(wd, "results.csv"))
    for extra in (["--config.optim.lr=0.02"], ["--config.optim.lr=0.02", "--collect"]):
        with pytest.raises(SystemExit) as e:
            sweep.main(base + extra)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "optim.lr: 0.003 there, 0.02 now" in err and err.count("\n") == 1, err
        assert read(os.path.join(wd, "results.csv")) == before  # the old numbers not rewritten


def test_a_diverging_point_is_recorded_and_the_others_still_train(config_file, tmp_path, monkeypatch, capsys):
    wd = str(tmp_path / "sw")
    trained = []

    def fake_train(config, point_wd):
        name = os.path.basename(point_wd)
        trained.append(name)
        if "b158" in name:
            raise FloatingPointError("non-finite loss at step 2; the last good checkpoint is step 0")
        _fake_run(point_wd, config.total_steps, 1.0, 2.0, 1000)
        return {"eval_bpb": 2.0}

    monkeypatch.setattr(trainer, "train", fake_train)
    with pytest.raises(SystemExit) as e:
        sweep.main(["--config", config_file, "--grid", "quant=b158,fp", "--workdir", wd])
    assert e.value.code == 1 and "1 point(s) diverged: quant=b158" in capsys.readouterr().err
    assert trained == ["quant=b158", "quant=fp"]  # the point after the diverged one trained
    rows = list(csv.DictReader(io.StringIO(read(os.path.join(wd, "results.csv")))))
    assert [r["point"] for r in rows] == ["quant=fp"]
    md = read(os.path.join(wd, "results.md"))
    assert "Failed (not in the table):\n- quant=b158: non-finite loss at step 2" in md
