"""ParetoQ: QAT of a pretrained fp run at 1, 1.58, 2, 3 or 4 bits (weights only).

    python -m bitjax.main --config configs/paretoq.py:src=runs/smollm2,bits=2,steps=200 \
        --config.data.name=text_files --config.data.paths='notes/*.txt' --workdir runs/smollm2-paretoq2

Liu et al., "ParetoQ", arXiv 2502.02631; reference facebookresearch/ParetoQ (`train.py`, `run_train.sh`).
The model is the source's with quant.method = ``paretoq<bits>`` (bitjax.quant.paretoq: every
q/k/v/o/gate/up/down projection's weight with one learned step per output channel; embeddings, head and
activations full precision) and ``config.init_from`` = src, so each step α starts from the pretrained
kernel as the reference's train.py sets it (plan.adopt_params). Every parameter trains (the reference
fine-tunes the whole model with HF's Trainer). The reference's optimiser settings: AdamW, weight decay 0,
lr 2e-5, cosine to 0, no warm-up (HF Trainer's defaults otherwise: β₂ 0.999, gradient clip 1.0). Its
token budget (the paper's advice: most of the compute in full-precision pretraining, about a tenth in
QAT) is the user's choice of `steps` × `batch` × `seq` here.

Arguments (after the colon): src (required: an fp run, e.g. a bitjax.import_hf import), bits (1, 158, 2,
3 or 4; 158 = ternary), steps (default 200), lr (default 2e-5), batch (8), seq (the source's seq_len).
The data corpus is the source's config.data unless --config.data.* say otherwise.
"""

import os

from bitjax import config as config_lib
from bitjax.run import config as train_config
from bitjax.run import plan as plan_lib


def get_config(arg=None):
    arg = config_lib.parse_arg(arg, src="", bits=2, steps=200, lr=2e-5, batch=8, seq=0)
    if not arg.src:
        raise ValueError("configs/paretoq.py needs src=WORKDIR (an fp run, trained here or imported)")
    if arg.bits not in (1, 158, 2, 3, 4):
        raise ValueError(f"configs/paretoq.py: bits={arg.bits}: choose 1, 158 (ternary), 2, 3 or 4")
    src, meta = plan_lib.stored_config(arg.src, "configs/paretoq.py:src")
    if src.model.quant.method != "fp" or src.model.quant.rules:
        raise ValueError(
            f"src={arg.src!r} is not a full-precision run: its quant is {src.model.quant.method!r} "
            f"{src.model.quant.rules!r} (ParetoQ starts from the pretrained fp weights)"
        )
    config = train_config.trainer_config()
    config.total_steps, config.batch_size = arg.steps, arg.batch
    config.seq_len = arg.seq or src.seq_len
    config.data = src.data
    saved_tok = meta.get("tokenizer", {})
    if src.data.tokenizer == "hf" and "file" in saved_tok:  # the workdir's copy: the original may be gone
        config.data.tokenizer_path = os.path.abspath(os.path.join(arg.src, os.path.dirname(saved_tok["file"])))
    config.model = src.model
    config.model.quant.method = f"paretoq{arg.bits}"
    config.init_from = os.path.abspath(arg.src)
    o = config.optim
    o.lr, o.weight_decay, o.b2, o.schedule = arg.lr, 0.0, 0.999, "cosine"
    o.warmup_steps, o.min_lr_ratio = 0, 0.0
    config.log_every, config.eval_every = 10, 100
    config.checkpoint_every = 100
    return config
