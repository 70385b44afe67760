"""Evaluation: run loading, fixed-shape scoring, perplexity CLI, and the lm-eval adapter (offline).

Every number is checked against log_softmax of the model's logits on the unpadded sequence, computed
here directly; the harness tests run lm-eval on task YAMLs and JSONL data written by the tests.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from builders import tiny_config
from flax import nnx

from bitjax.eval import __main__ as eval_cli
from bitjax.eval import perplexity, sample, scoring
from bitjax.run import plan as plan_lib
from bitjax.train import trainer

SEQ = 32  # tiny_config's seq_len: the model's context for evaluation


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """A tiny b158 run trained for 3 steps on the 8-device mesh; (workdir, plan, params)."""
    wd = str(tmp_path_factory.mktemp("run"))
    trainer.train(tiny_config("b158", steps=3, data_dir=data_dir, **{"optim.warmup_steps": 1}), wd)
    plan, params = plan_lib.restore(wd)
    return wd, plan, params


@pytest.fixture(scope="module")
def scorer(run):
    _, setup, params = run
    return scoring.Scorer(setup, params, batch_size=8)


@pytest.fixture(scope="module")
def direct(run):
    """tokens → float64 log_softmax [len−1, V] of the model on exactly those tokens (no padding, B=1)."""
    _, setup, params = run
    host = jax.device_get(params)
    fn = jax.jit(lambda p, x: jax.nn.log_softmax(nnx.merge(setup.graphdef, p)(x), axis=-1))
    return lambda tokens: np.asarray(fn(host, jnp.asarray([list(tokens)[:-1]], jnp.int32))[0], np.float64)


def direct_logprob(direct, tokens, n_pred):
    """Σ log p(tokens[-n_pred:] | before) and whether each is the argmax, from one unpadded forward."""
    lp = direct(tokens)
    idx = np.arange(len(tokens) - 1 - n_pred, len(tokens) - 1)
    tgt = np.asarray(tokens)[idx + 1]
    return float(lp[idx, tgt].sum()), bool((lp[idx].argmax(-1) == tgt).all())


# ---------------------------------------------------------------------------- loading and scoring
def test_missing_workdir_or_step_is_one_clear_error_and_creates_nothing(run, tmp_path, capsys):
    wd = tmp_path / "typo"
    with pytest.raises(ValueError, match="holds no checkpoints"):
        plan_lib.restore(str(wd))
    assert not wd.exists()
    with pytest.raises(ValueError, match=r"--step 7: .* steps \[3\]"):
        plan_lib.restore(run[0], 7)
    with pytest.raises(SystemExit) as exit_info:
        eval_cli.main(["--workdir", str(wd), "--text_files", __file__])
    assert exit_info.value.code == 2  # a user error: one line, exit 2, as the other CLIs
    err = capsys.readouterr().err
    assert err.startswith("error: --workdir") and "holds no checkpoints" in err and err.count("\n") == 1
    assert not wd.exists()


def test_rolling_windows_predict_every_token_once_within_the_context():
    toks = list(range(100, 171))  # 71 tokens, L = 32: windows of 32, 32, 7 predictions
    wins = list(scoring.rolling_windows(toks, 7, 32))
    assert [n for _, n in wins] == [32, 32, 7]
    assert wins[0][0] == [7] + toks[:32]
    assert [t for seq, n in wins for t in seq[-n:]] == toks  # each token predicted once, in order
    assert all(len(seq) <= 33 for seq, _ in wins) and wins[1][0] == toks[31:64] and wins[2][0] == toks[71 - 33 :]
    assert list(scoring.rolling_windows([], 7, 32)) == []


def test_scorer_matches_direct_log_softmax_across_buckets_padding_and_truncation(scorer, direct):
    rng = np.random.default_rng(0)
    reqs = [(rng.integers(0, 256, n).tolist(), k) for n, k in ((5, 2), (20, 7), (33, 33 - 1), (9, 1))]
    long = rng.integers(0, 256, 50).tolist()  # longer than the context: keeps its last 33 tokens
    lp, greedy = scorer.score(reqs + [(long, 4)])
    for (tokens, k), got_lp, got_g in zip(reqs + [(long[-33:], 4)], lp, greedy):
        want_lp, want_g = direct_logprob(direct, tokens, k)
        np.testing.assert_allclose(got_lp, want_lp, rtol=1e-5, atol=1e-4)
        assert got_g == want_g
    assert {length for _, length in scorer.shapes_compiled} <= set(scoring.length_buckets(SEQ)) == {16, 32}
    # a continuation that is the model's own argmax is greedy (causal: the last input fixes it)
    seq = [104, 101, 108, 108, 0]
    seq[-1] = int(direct(seq)[-1].argmax())
    assert scorer.score([(seq, 1)])[1][0] and not scorer.score([(seq[:-1] + [(seq[-1] + 1) % 256], 1)])[1][0]


# ---------------------------------------------------------------------------- perplexity (no lm-eval)
def test_perplexity_cli_writes_consistent_bits_per_byte(run, direct, tmp_path):
    short, long = "def f(x):\n    return x\n", "import os\n" + "print(os.getcwd())  # é\n" * 4  # 2 windows+
    for name, text in (("a.txt", short), ("b.txt", long)):
        (tmp_path / name).write_text(text, encoding="utf-8")
    out = eval_cli.main(
        ["--workdir", run[0], "--text_files", str(tmp_path / "*.txt"), "--out", str(tmp_path / "ppl.json")]
    )
    saved = json.loads((tmp_path / "ppl.json").read_text())
    assert {"bits_per_byte", "nats_per_token", "token_ppl"} <= set(saved)
    n_bytes = len(short.encode()) + len(long.encode())
    assert saved["bytes"] == n_bytes and saved["tokens"] == n_bytes  # byte tokenizer
    np.testing.assert_allclose(
        saved["bits_per_byte"], saved["nats_per_token"] * saved["tokens"] / (n_bytes * math.log(2))
    )
    np.testing.assert_allclose(saved["token_ppl"], math.exp(saved["nats_per_token"]))
    # the short file is one window: <eos> + its bytes; the long one as the harness windows it
    ids = lambda s: list(s.encode())
    eos = run[1].tokenizer.eos_id
    nats = -direct_logprob(direct, [eos] + ids(short), len(short))[0]
    for seq, n in scoring.rolling_windows(ids(long), eos, SEQ):
        nats -= direct_logprob(direct, seq, n)[0]
    np.testing.assert_allclose(saved["nats"], nats, rtol=1e-5)
    assert out["files"] == sorted(str(tmp_path / n) for n in ("a.txt", "b.txt"))


# ---------------------------------------------------------------------------- lm-eval adapter
@pytest.fixture(scope="module")
def lm(scorer):
    pytest.importorskip("lm_eval")
    from bitjax.eval.harness import BitjaxLM

    return BitjaxLM(scorer=scorer, max_gen_toks=8)


class Req:  # the part of lm_eval.api.instance.Instance that models read
    def __init__(self, *args):
        self.args = args


def test_harness_registers_bitjax_and_loads_a_workdir(run):
    pytest.importorskip("lm_eval")
    from lm_eval.api.registry import get_model

    from bitjax.eval.harness import BitjaxLM

    assert get_model("bitjax") is BitjaxLM
    # lm-eval's CLI passes its own --batch_size too: --model_args win
    lm = BitjaxLM.create_from_arg_string(f"workdir={run[0]},step=3,batch_size=16", {"device": "cpu", "batch_size": 1})
    assert lm.max_length == SEQ and lm.scorer.batch_size == 16
    lm = BitjaxLM.create_from_arg_string(f"workdir={run[0]}", {"batch_size": 4})
    assert lm.scorer.batch_size == 8  # rounded up to the 8-way data axis
    assert get_model("hf") is not None  # the harness's own models stay registered


def test_loglikelihood_matches_direct_log_probs(lm, direct):
    eos = lm.eot_token_id
    reqs = [("Question: 2+2?\nAnswer:", " 4"), ("def f(x): ", "return x"), ("", "hello")]
    got = lm.loglikelihood([Req(c, x) for c, x in reqs])
    enc = lambda s: list(s.encode())
    # the trailing space moves into the continuation; an empty context is <eos>
    want = [
        direct_logprob(direct, enc(reqs[0][0] + reqs[0][1]), 2),
        direct_logprob(direct, enc("def f(x): return x"), len(" return x")),
        direct_logprob(direct, [eos] + enc("hello"), 5),
    ]
    for (g_lp, g_greedy), (w_lp, w_greedy) in zip(got, want):
        np.testing.assert_allclose(g_lp, w_lp, rtol=1e-5, atol=1e-4)
        assert g_greedy == w_greedy


def test_loglikelihood_rolling_matches_lm_evals_windows_scored_directly(lm, direct):
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    texts = ["short text", "x = [i * i for i in range(10)]\n" * 3]  # the second spans 3 windows
    got = lm.loglikelihood_rolling([Req(t) for t in texts])
    for text, g in zip(texts, got):
        want = 0.0
        for ctx, pred in map(
            make_disjoint_window, get_rolling_token_windows(list(text.encode()), lm.eot_token_id, SEQ, 1)
        ):
            want += direct_logprob(direct, ctx + pred, len(pred))[0]
        np.testing.assert_allclose(g, want, rtol=1e-5)


def test_generate_until_is_the_greedy_sampler_cut_at_stop_sequences(lm, run):
    _, setup, params = run
    model = setup.model(jax.device_get(params))
    prompts = ["def ", "import numpy as"]

    def greedy_text(p):
        out = np.asarray(sample.generate(model, jnp.asarray([list(p.encode())], jnp.int32), 8, temperature=0))[0]
        new = out[len(p.encode()) :]
        cut = np.flatnonzero(new == setup.tokenizer.eos_id)
        return setup.tokenizer.decode(new[: cut[0]] if len(cut) else new)

    full = [greedy_text(p) for p in prompts]
    assert lm.generate_until([Req(p, {"until": [], "max_gen_toks": 8}) for p in prompts]) == full
    stop = full[1][3:5]  # a stop sequence inside the second continuation
    got = lm.generate_until([Req(p, {"until": [stop], "max_gen_toks": 8}) for p in prompts])
    assert got[1] == full[1][: full[1].index(stop)] and len(got[1]) <= 3
    assert got[0] == full[0][: full[0].find(stop)] if stop in full[0] else got[0] == full[0]


def _task_files(tmp_path):
    """Three local tasks (multiple_choice, loglikelihood_rolling, generate_until) over JSONL data."""
    docs = {
        # equal lengths keep the direct checks to one compilation
        "mc": [
            {"q": "1 + 1 =", "choices": [" 2", " 3", " 4"], "label": 0},
            {"q": "2 * 3 =", "choices": [" 5", " 6"], "label": 1},
            {"q": "9 - 4 =", "choices": [" 5", " 4"], "label": 0},
            {"q": "8 / 2 =", "choices": [" 2", " 6", " 4"], "label": 2},
        ],
        "ppl": [{"text": "def add(a, b):\n    return a + b\n"}, {"text": "for i in range(3):\n    print(i)\n" * 2}],
        "gen": [
            {"prompt": "def ", "answer": "f"},
            {"prompt": "for ", "answer": "i"},
            {"prompt": "x = ", "answer": "1"},
        ],
    }
    task = {
        "mc": "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{label}}'\nmetric_list:\n  - metric: acc\n",
        "ppl": "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n",
        "gen": "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        'generation_kwargs:\n  until: ["\\n"]\n  max_gen_toks: 8\n  do_sample: false\n'
        "metric_list:\n  - metric: exact_match\n",
    }
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    for name, rows in docs.items():
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tasks_dir / f"tiny_{name}.yaml").write_text(
            f"task: tiny_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {tmp_path / 'hf_cache'}\ntest_split: test\n" + task[name]
        )
    return tasks_dir, docs


def test_simple_evaluate_on_local_tasks_all_three_request_types(run, scorer, direct, tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tasks_dir, docs = _task_files(tmp_path)
    out = eval_cli.main(
        [
            "--workdir",
            run[0],
            "--tasks",
            "tiny_mc,tiny_ppl,tiny_gen",
            "--include_path",
            str(tasks_dir),
            "--bootstrap_iters",
            "0",
            "--out",
            str(tmp_path / "res.json"),
        ]
    )
    res = json.loads((tmp_path / "res.json").read_text())["results"]
    assert res == json.loads(json.dumps(out["results"]))
    # multiple choice: acc from log-probs computed directly (the harness puts a space-free target
    # after the context: context = q, continuation = choice)
    enc = lambda s: list(s.encode())
    right = [
        int(np.argmax([direct_logprob(direct, enc(d["q"] + c), len(enc(c)))[0] for c in d["choices"]]) == d["label"])
        for d in docs["mc"]
    ]
    np.testing.assert_allclose(res["tiny_mc"]["acc,none"], np.mean(right))
    # rolling: bits/byte over the documents = the perplexity code's on the same texts
    texts = [d["text"] for d in docs["ppl"]]
    ppl = perplexity.score_texts(scorer, texts)
    np.testing.assert_allclose(res["tiny_ppl"]["bits_per_byte,none"], ppl["bits_per_byte"], rtol=1e-5)
    assert 0.0 <= res["tiny_gen"]["exact_match,none"] <= 1.0
