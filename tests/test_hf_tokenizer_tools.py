"""data.tokenizer=hf through the tools (issue 27 item 4): PTQ calibration text, distillation (teacher and
student share the tokenizer; another one is refused in one line) and the lm-eval adapter.

One tiny fp run trained 3 steps with a byte-level BPE tokenizer.json trained here (tests/builders.py,
no downloads). References: the `tokenizers` library on that file, and log-probabilities computed here
from the run's own logits.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

tokenizers = pytest.importorskip("tokenizers")

import builders
from builders import losses, tiny_config

from bitjax import errors
from bitjax.run import plan as plan_lib
from bitjax.train import trainer

pytestmark = pytest.mark.slow
VOCAB = 512  # covers the 400-piece tokenizer


def hf_config(tok_dir, method="fp", steps=3, data_dir=None, **over):
    return tiny_config(
        method,
        steps=steps,
        data_dir=data_dir,
        **{
            "data.tokenizer": "hf",
            "data.tokenizer_path": tok_dir,
            "model.vocab_size": VOCAB,
            "optim.warmup_steps": 1,
            **over,
        },
    )


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_dir):
    """(workdir, tokenizer dir) of a tiny fp run with an HF tokenizer."""
    root = tmp_path_factory.mktemp("hftools")
    tok_dir = builders.hf_tokenizer("bytelevel", str(root / "tok"))
    wd = str(root / "fp")
    trainer.train(hf_config(tok_dir, data_dir=data_dir), wd)
    return wd, tok_dir


def test_ptq_calibrates_on_text_with_the_hf_tokenizer(teacher, tmp_path):
    from bitjax import ptq

    wd, tok_dir = teacher
    ref = tokenizers.Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    plan, _ = plan_lib.restore_one_device(wd)
    texts = [builders._stdlib_text("heapq.py", 3000), builders.TEXT]
    eos = ref.token_to_id("<|im_end|>")
    stream = [i for t in texts for i in [*ref.encode(t, add_special_tokens=False).ids, eos]]
    rows = len(stream) // 32
    want = np.asarray(stream[: rows * 32]).reshape(rows, 32)[:4]
    np.testing.assert_array_equal(ptq.text_calibration_tokens(plan.tokenizer, texts, 4, 32), want)

    calib = tmp_path / "calib.txt"
    calib.write_text(texts[0])
    out = str(tmp_path / "q")
    ptq.run(wd, "gptq", 4, out, calib_sequences=4, calib_text=[str(calib)])
    q_plan, _ = plan_lib.restore_one_device(out)  # the quantized run carries the tokenizer
    assert q_plan.tokenizer.name == plan.tokenizer.name
    assert os.path.isfile(os.path.join(out, "tokenizer", plan.tokenizer.name, "tokenizer.json"))


def test_distillation_shares_the_hf_tokenizer_and_refuses_another(teacher, tmp_path, data_dir):
    wd, tok_dir = teacher
    student = hf_config(tok_dir, "b158", steps=2, data_dir=data_dir, **{"distill.teacher_workdir": wd})
    trainer.train(student, str(tmp_path / "s"))
    assert len(losses(str(tmp_path / "s"))) == 2
    other = builders.hf_tokenizer("bytelevel", str(tmp_path / "other"), vocab_size=420)  # another vocabulary
    bad = hf_config(other, "b158", steps=2, data_dir=data_dir, **{"distill.teacher_workdir": wd})
    with pytest.raises(errors.UserError) as e:
        trainer.train(bad, str(tmp_path / "bad"))
    msg = str(e.value)
    assert "\n" not in msg and "another tokenizer" in msg and "tokenizer vocabulary" in msg, msg
    assert not os.path.isdir(os.path.join(tmp_path, "bad", "checkpoints"))


def test_lm_eval_adapter_tokenizes_and_scores_with_the_hf_tokenizer(teacher):
    pytest.importorskip("lm_eval")
    import jax
    import jax.numpy as jnp

    from bitjax.eval.harness import BitjaxLM

    wd, tok_dir = teacher
    ref = tokenizers.Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))
    lm = BitjaxLM.create_from_arg_string(f"workdir={wd}", {"batch_size": 8})
    enc = lambda s: ref.encode(s, add_special_tokens=False).ids
    assert lm.tok_encode(builders.TEXT) == enc(builders.TEXT) and lm.eot_token_id == ref.token_to_id("<|im_end|>")
    plan, params = plan_lib.restore_one_device(wd)
    model = plan.model(params)

    class Req:
        def __init__(self, *args):
            self.args = args

    reqs = [("def f(x):", " return x"), ("The café is", " 東京")]
    got = lm.loglikelihood([Req(c, x) for c, x in reqs])
    for (ctx, cont), (g_lp, _) in zip(reqs, got, strict=True):
        whole, n_ctx = enc(ctx + cont), len(enc(ctx))  # lm-eval's pairing: the continuation is whole[n_ctx:]
        lp = np.asarray(jax.nn.log_softmax(model(jnp.asarray([whole[:-1]], jnp.int32))[0].astype(jnp.float32)))
        want = sum(float(lp[i - 1, whole[i]]) for i in range(n_ctx, len(whole)))
        np.testing.assert_allclose(g_lp, want, rtol=1e-5, atol=1e-4)
