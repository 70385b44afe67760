"""EfficientQAT's E2E-QP: the step sizes of a Block-AP output trained end to end, its codes frozen.

    python -m bitjax.ptq --workdir runs/fp --method efficientqat --bits 2 --group_size 128 \
        --calib_text 'notes/*.txt' --out runs/fp_eqat2
    python -m bitjax.main --config configs/e2e_qp.py:src=runs/fp_eqat2,bits=2,group_size=128,steps=200 \
        --config.data.name=text_files --config.data.paths='notes/*.txt' --workdir runs/fp_eqat2_e2e

Chen et al., "EfficientQAT", arXiv 2407.11062 §3.3; reference OpenGVLab/EfficientQAT ``main_e2e_qp.py``
and its ``examples/e2e_qp`` scripts. The model is the source's (a `bitjax.ptq` output: an fp run whose
projection kernels are Block-AP's W̃) with every q/k/v/o/gate/up/down projection's weight quantizer set
to ``e2e_qp<bits>`` (bitjax.quant.efficientqat.e2e_qp: the kernel's grid recovered min-max, its codes and
zero points frozen, W̃ = (s₀ + Δs)·(C − z)); ``config.init_from`` = src (Δs starts at 0, so step 0 is the
source's model); ``config.optim.trainable`` = 'dstep': only the step changes train; embeddings, norms
and the head stay as Block-AP left them, as the reference (only ``scales`` require grad). The
reference's optimiser settings: AdamW, weight decay 0, lr 2e-5 at W2 and 1e-5 at W3/W4, cosine with
3% warm-up, the language-model cross-entropy (no distillation); its 4096 × 4096-token RedPajama samples
in one epoch are a GPU's budget, here `steps` × `batch` × `seq` tokens of the configured corpus.

Arguments (after the colon): src (required), bits (the source's, 2..8), group_size (the source's;
0 = per channel), steps (default 200), lr (default: the reference's for `bits`), batch (8), seq (the
source's seq_len). The data corpus is the source's config.data unless --config.data.* say otherwise.
"""

import os

from bitjax import config as config_lib
from bitjax.run import config as train_config
from bitjax.run import plan as plan_lib

PROJECTIONS = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, src="", bits=0, group_size=0, steps=200, lr=0.0, batch=8, seq=0)
    if not arg.src:
        raise ValueError("configs/e2e_qp.py needs src=WORKDIR (a bitjax.ptq --method efficientqat output)")
    if not 2 <= arg.bits <= 8:
        raise ValueError(f"configs/e2e_qp.py: bits={arg.bits}: give the source's bits (2..8)")
    src, meta = plan_lib.stored_config(arg.src, "configs/e2e_qp.py:src")
    if src.model.quant.method != "fp" or src.model.quant.rules:
        raise ValueError(
            f"src={arg.src!r} is not an fp run holding W̃ (a bitjax.ptq output): its quant is "
            f"{src.model.quant.method!r} {src.model.quant.rules!r}"
        )
    config = train_config.trainer_config()
    config.total_steps, config.batch_size = arg.steps, arg.batch
    config.seq_len = arg.seq or src.seq_len
    config.data = src.data
    saved_tok = meta.get("tokenizer", {})
    if src.data.tokenizer == "hf" and "file" in saved_tok:  # the workdir's copy: the original may be gone
        config.data.tokenizer_path = os.path.abspath(os.path.join(arg.src, os.path.dirname(saved_tok["file"])))
    config.model = src.model
    granularity = f"group{arg.group_size}" if arg.group_size else "channel"
    config.model.quant.rules = f"{PROJECTIONS}: weight=e2e_qp{arg.bits}, weight.granularity={granularity}"
    config.init_from = os.path.abspath(arg.src)
    o = config.optim
    o.trainable = r"\.dstep$"
    o.lr = arg.lr or (2e-5 if arg.bits <= 2 else 1e-5)
    o.weight_decay, o.b2, o.schedule = 0.0, 0.999, "cosine"
    o.warmup_steps, o.min_lr_ratio = max(1, round(0.03 * arg.steps)), 0.0
    config.log_every, config.eval_every = 10, 100
    config.checkpoint_every = 100
    return config
