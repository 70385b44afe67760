"""Convert a pretrained full-precision run to BitNet b1.58 by continued QAT with logits distillation.

    python -m bitjax.main --config configs/convert_b158.py:src=runs/smollm2,steps=200 \
        --config.data.name=text_files --config.data.paths='corpus/*.txt' --workdir runs/smollm2-b158

BitNet Distillation (BitDistill, arXiv 2510.13998) and HF's "Fine-tuning LLMs to 1.58bit" (2024), as far as
bitjax has them: the student is the source run's model (read from its stored config: shapes,
tokenizer, vocabulary) with quant.method=b158, initialised from the source (config.init_from) and
trained toward the source's next-token distribution (config.distill, teacher = the source itself,
frozen), with the quantizers faded in over the first steps (quant.warmup_steps: W̃ = W + λ(Q(W) − W),
x̃ likewise, λ = min(1, step / warmup); bitjax.quant.warmup) and BitDistill's SubLN (sub_norm=True:
RMSNorm before o_proj and down_proj, inserted with scale 1; init_from initialises them fresh and names
them). BitDistill's attention-relation distillation and its continued pre-training stage as a separate
run are not here.

Arguments (after the colon): src = the fp run's workdir (required; e.g. the SmolLM2 import), steps
(total, default 1000), warmup = quant.warmup_steps (default: a fifth of the steps, the blog's 1000 of
5000), sub_norm (default True), kd (default True: distill from src; False: label cross-entropy only),
lr (default 1e-4, the blog's), batch (8), seq (256: the student's and teacher's context in training).
Every field can still be overridden with --config.<path>=<value>. The data corpus is the source's
config.data (for an import: the embedded python_stdlib) unless --config.data.* say otherwise; the
tokenizer is always the source's, read from its workdir copy (the teacher's and student's must match).
"""

import os

from bitjax import config as config_lib
from bitjax.run import config as train_config
from bitjax.run import plan as plan_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, src="", steps=1000, warmup=-1, sub_norm=True, kd=True, lr=1e-4, batch=8, seq=256)
    if not arg.src:
        raise ValueError("configs/convert_b158.py needs src=WORKDIR (the full-precision run to convert)")
    src, meta = plan_lib.stored_config(arg.src, "configs/convert_b158.py:src")
    if src.model.quant.method != "fp":
        raise ValueError(f"src={arg.src!r} trained quant.method={src.model.quant.method!r}: convert an fp run")
    config = train_config.trainer_config()
    config.total_steps, config.batch_size, config.seq_len = arg.steps, arg.batch, arg.seq
    config.data = src.data
    saved_tok = meta.get("tokenizer", {})
    if src.data.tokenizer == "hf" and "file" in saved_tok:  # the workdir's copy: the original may be gone
        config.data.tokenizer_path = os.path.abspath(os.path.join(arg.src, os.path.dirname(saved_tok["file"])))
    config.model = src.model
    q = config.model.quant
    q.method, q.rules, q.stage1, q.stage2_frac = "b158", "", "", None
    q.warmup_steps = arg.warmup if arg.warmup >= 0 else config.get_ref("total_steps") // 5
    if "sub_norm" in config.model:
        config.model.sub_norm = bool(arg.sub_norm)
    config.init_from = os.path.abspath(arg.src)
    if arg.kd:
        config.distill.teacher_workdir = os.path.abspath(arg.src)
        # BitDistill's L = L_CE + λ·L_LD (KL to the fp model's logits, λ = 1 here), halved: w = 0.5
        config.distill.loss, config.distill.temperature, config.distill.label_weight = "kl", 1.0, 0.5
    config.optim.lr = arg.lr
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = config.get_ref("total_steps") // 20
    config.log_every, config.eval_every = 10, 100
    config.checkpoint_every = 100
    return config
