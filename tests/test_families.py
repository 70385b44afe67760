"""Adding a model family is one Family entry: a toy family (a bigram LM) registered the documented way
trains in the one trainer, is distilled from a transformer teacher, and is named in errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from builders import tiny_config
from flax import nnx
from ml_collections import ConfigDict, FieldReference

from bitjax import config as config_lib
from bitjax import models
from bitjax.models import transformer
from bitjax.nn.params import param
from bitjax.train import trainer


def bigram_config():
    return ConfigDict(
        dict(
            name="bigram",
            vocab_size=FieldReference(259, field_type=int),
            d_model=16,
            quant=transformer.default_config().quant,
        )
    )


def validate_bigram(cfg, seq_len=None):
    config_lib.check_fields(cfg, bigram_config(), "config.model", "tests.test_families.bigram_config()")


class Bigram(nnx.Module):
    """logits[b, l] = embedding[tokens[b, l]] · head: each token's next-token distribution."""

    def __init__(self, cfg, *, rngs):
        init = jax.nn.initializers.normal(0.02)
        self.embedding = param(init(rngs.params(), (cfg.vocab_size, cfg.d_model)), ("vocab", "embed"))
        self.head = param(init(rngs.params(), (cfg.d_model, cfg.vocab_size)), ("embed", "vocab"))

    def __call__(self, tokens):
        return jnp.take(self.embedding[...], tokens, axis=0) @ self.head[...]


BIGRAM = models.Family(
    Bigram,
    validate_bigram,
    {"embed": "config.model.d_model", "vocab": "config.model.vocab_size"},
    stage_configs=lambda cfg, total_steps: [(0, cfg)],
    quant_table=lambda cfg: {},
    default_config=bigram_config,
    sizes={"tiny": dict(d_model=8)},
)


@pytest.fixture
def bigram_family(monkeypatch):
    monkeypatch.setitem(models._MODELS, "bigram", BIGRAM)


def test_a_registered_family_has_presets_and_is_named_in_errors(bigram_family):
    assert models.preset("bigram", "tiny").d_model == 8
    with pytest.raises(ValueError, match=r"unknown size 'huge' of model family 'bigram'; choose one of \['tiny'\]"):
        models.preset("bigram", "huge")
    with pytest.raises(ValueError, match=r"config\.model\.name='bigram' has no HF transformers layout"):
        models.hf_param_names(Bigram(bigram_config(), rngs=nnx.Rngs(0)))
    cfg = bigram_config()
    cfg.d_modle = 3
    with pytest.raises(
        ValueError,
        match=r"config\.model: unknown field\(s\) \['d_modle'\] \(a typo\? known: "
        r"d_model, name, quant, vocab_size\); start from",
    ):
        models.validate(cfg)


@pytest.mark.slow
def test_a_new_family_trains_and_is_distilled_from_a_transformer(bigram_family, data_dir, tmp_path):
    teacher = str(tmp_path / "teacher")
    trainer.train(tiny_config("fp", steps=4, data_dir=data_dir, **{"optim.warmup_steps": 1}), teacher)
    cfg = tiny_config(
        "fp",
        steps=6,
        data_dir=data_dir,
        **{"optim.warmup_steps": 1, "optim.lr": 3e-2, "distill.teacher_workdir": teacher},
    )
    cfg.model = models.preset("bigram", "tiny")
    cfg.model.vocab_size = None
    out = trainer.train(cfg, str(tmp_path / "bigram"))
    assert np.isfinite(out["distill_loss"]) and np.isfinite(out["eval_bpb"])
    # the student is the bigram (its own parameter tree), the teacher a transformer
    from bitjax.run import checkpoint as ckpt_lib

    meta = ckpt_lib.Checkpointer(str(tmp_path / "bigram" / "checkpoints")).restore_metadata()
    assert meta["config"]["model"]["name"] == "bigram" and meta["teacher_step"] == 4


def test_compare_and_step_time_take_any_config_file_and_the_demo_is_unchanged():
    import importlib.util
    import os
    import sys

    from bitjax import compare

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    demo = compare._point("fp", 0)  # `make demo`: the transformer config, quant=fp, size tiny
    assert (demo.config_file, demo.arg) == (compare.CONFIG_FILE, "quant=fp,size=tiny,steps=0")
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(root, "configs", "transformer.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # another file or size: the file's own get_config, with --methods/--steps deciding quant and steps
    c = compare._config("b158", 7, os.path.join(root, "configs", "transformer.py") + ":size=small,quant=fp")
    assert c.to_dict() == mod.get_config("quant=b158,size=small,steps=7").to_dict()
    sys.path.insert(0, os.path.join(root, "benchmarks"))
    import step_time

    c = step_time.make_config("a48", "small", 4, 32, os.path.join(root, "configs", "transformer.py"))
    assert (c.model.quant.method, c.model.d_model, c.batch_size, c.seq_len) == ("a48", 768, 4, 32)
    assert step_time.make_config("fp", "cpu_m", 4, 32).model.d_model == 512


def test_hf_architectures_are_one_registry_and_unknown_ones_are_named():
    from bitjax.export import hf

    fp, bitnet = transformer.default_config(), transformer.default_config()
    bitnet.sub_norm = True
    mamba = models.default_config("mamba2")
    assert [hf.architecture(c) for c in (fp, bitnet, mamba)] == [
        "LlamaForCausalLM",
        "BitNetForCausalLM",
        "Mamba2ForCausalLM",
    ]
    assert {a.family for a in hf.ARCHITECTURES.values()} == {"transformer", "mamba2"}
    with pytest.raises(
        ValueError,
        match=r"architecture 'GPT2LMHeadModel' is not known: LlamaForCausalLM or BitNetForCausalLM or Mamba2",
    ):
        hf.get_architecture("GPT2LMHeadModel")
    with pytest.raises(
        ValueError, match=r"architecture 'Mamba2ForCausalLM' is not imported: LlamaForCausalLM or BitNetForCausalLM$"
    ):
        hf.model_config_from_hf({"architectures": ["Mamba2ForCausalLM"]})
    cfg = hf.model_config_from_hf(
        dict(
            architectures=["LlamaForCausalLM"],
            **hf.hf_config(fp)[1],
        )
    )
    assert config_lib.to_dict(cfg) == config_lib.to_dict(fp)  # the Llama round trip of the default config
