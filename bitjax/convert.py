"""1.58-bit conversion of a pretrained full-precision run without training (issue 28 item 6a).

    python -m bitjax.convert --workdir runs/smollm2 --out runs/smollm2-b158-ptq \
        [--method b158] [--sub_norm] [--eval_text 'notes/*.md'] [--step N]

--out becomes an ordinary run directory: the source run's config with config.model.quant.method set to
`--method` (b158 by default: absmean-ternary weights, bitjax.quant.weights.ternary_absmean, and per-token
int8 absmax activations, W1.58A8, exactly as a trained b158 run computes at inference) and the source's
parameters unchanged as its latent weights, so the quantizers run on the fp weights at every call. This
is the b158 run config evaluated on the fp weights, not a weight-only PTQ method of bitjax.ptq: a PTQ
output stays an fp run holding W̃ (its activations unquantized), while this is a b158 run (the same model
the continued QAT of configs/convert_b158.py starts from) that bitjax.eval, bitjax.sample and
bitjax.export (packed HF BitNet, GGUF TQ2_0/TQ1_0) read as one. With --sub_norm the BitNet sub-norms
(attn_sub_norm before o_proj, ffn_sub_norm before down_proj; BitDistill's SubLN) are inserted with scale 1
(an RMSNorm with scale 1 is not the identity: it changes the function, which training then adapts to).

DIR/ptq.json holds, as bitjax.ptq's, eval_loss (nats/token) / eval_bpb / eval_ppl of the converted run
and of the source, on the validation split (the trainer's eval; needs the run's corpus) or on the
--eval_text files (bitjax.eval.perplexity; needs only the workdir), and `eval_data` saying which.
A --out that holds anything but an earlier output of this tool is refused, never deleted.
"""

from __future__ import annotations

import argparse
import os

import jax
from flax import nnx

from bitjax import config as config_lib
from bitjax import errors
from bitjax import ptq as ptq_lib
from bitjax.data import text as text_lib
from bitjax.eval import perplexity
from bitjax.eval.scoring import Scorer
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import plan as plan_lib
from bitjax.train import optim
from bitjax.train import workdir as workdir_lib

# ternary-weight methods whose parameters are exactly the fp model's (no learned scales): a conversion
# without training. Learned-scale methods (FBI, OneBit, ParetoQ) start from an fp run by config.init_from,
# which initialises their scales from its kernels (plan.adopt_params), and then train
METHODS = ("b158", "a48")
MARKER = ".bitjax_convert"  # in each --out this tool wrote: only those does it replace
ONE_DEVICE = dict(data=1, fsdp=1, tensor=1)


def converted_config(config, method: str = "b158", sub_norm: bool = False):
    """The source run's config with quant.method=`method` (its rules, stages and warm-up cleared) and,
    with sub_norm, the BitNet sub-norms on (a copy; ValueError for a family without them)."""
    config = config.copy_and_resolve_references()
    q = config.model.quant
    q.method, q.rules, q.stage1, q.stage2_frac = method, "", "", None
    if "warmup_steps" in q:
        q.warmup_steps = 0
    if sub_norm:
        if "sub_norm" not in config.model:
            raise ValueError(f"--sub_norm: model family {config.model.name!r} has no sub-norms")
        config.model.sub_norm = True
    return config


def run(
    workdir: str,
    out: str,
    method: str = "b158",
    sub_norm: bool = False,
    eval_text: list[str] | None = None,
    step: int | None = None,
) -> dict:
    """The whole conversion (see the module docstring); returns what it writes to OUT/ptq.json."""
    if method not in METHODS:
        raise errors.UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    ptq_lib.check_out_apart(workdir, out)
    with errors.as_user_errors():  # a pattern that matches no file
        eval_files = perplexity.expand_paths(eval_text) if eval_text else None
    src_plan, params = plan_lib.restore(workdir, step, devices=jax.devices()[:1], mesh=ONE_DEVICE)
    step = src_plan.step
    if src_plan.config.model.quant.method != "fp":
        raise errors.UserError(
            f"--workdir {workdir} trained quant.method={src_plan.config.model.quant.method!r}: "
            "conversion starts from a full-precision ('fp') run"
        )
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as src:
        meta = src.restore_metadata(step)
    try:
        config = converted_config(src_plan.config, method, sub_norm)
        plan = plan_lib.resolve(config, src_plan.tokenizer, jax.devices()[:1], mesh=ONE_DEVICE, step=step)
    except ValueError as e:
        raise errors.UserError(f"--method {method}{' --sub_norm' * sub_norm}: {e}") from None
    fresh = nnx.to_pure_dict(nnx.state(plan.build(jax.random.key(config.seed)))) if sub_norm else None
    qparams, added = plan_lib.adopt_params(
        params, nnx.to_pure_dict(plan.abstract_params), fresh, config.model.name, f"--workdir {workdir!r}", plan=plan
    )

    if eval_files is None:
        _, eval_data = ptq_lib.run_data(src_plan)
        evaluate = lambda p, pl: plan_lib.evaluate(pl, pl.eval_step(), p, eval_data)
    else:
        texts = ptq_lib.read_texts(eval_files, config.data.get("encoding", text_lib.DEFAULT_ENCODING))

        def evaluate(p, pl):
            m = perplexity.score_texts(Scorer(pl, p), texts)
            return {"eval_loss": m["nats_per_token"], "eval_bpb": m["bits_per_byte"], "eval_ppl": m["token_ppl"]}

    workdir_lib.fresh(
        out,
        MARKER,
        f"--out {out} exists and is not a bitjax.convert output (it may hold a real run); nothing was "
        "deleted. Choose another --out.",
    )  # every check above passed: now the disk is touched
    fp_eval = evaluate(params, src_plan)
    q_eval = evaluate(qparams, plan)

    tx, _ = optim.make_optimizer(config.optim, config.total_steps)
    state = optim.train_state(tx, qparams, step)  # a fresh optimizer, as the trainer would start from it
    info = {
        "method": method,
        "bits": 1.58,
        "sub_norm_inserted": added,
        "eval_data": "validation split" if eval_files is None else eval_files,
        "source": os.path.abspath(workdir),
        "source_step": int(step),
    }
    meta = {**meta, "config": config_lib.to_dict(plan.config), "quant_recipe": plan.quant_table, "convert": info}
    result = ptq_lib.write_output_run(out, MARKER, plan, step, state, meta, info, q_eval, fp_eval)
    print(plan.describe())
    print(
        f"{method} without training: eval bits/byte {q_eval['eval_bpb']:.4f} (fp {fp_eval['eval_bpb']:.4f}), "
        f"eval loss {q_eval['eval_loss']:.4f} (fp {fp_eval['eval_loss']:.4f}); wrote {out}/checkpoints and "
        f"{out}/ptq.json" + (f"; sub-norms inserted: {len(added)} parameters" if added else "")
    )
    return result


@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a trained (or imported) full-precision run")
    p.add_argument("--out", required=True, help="the converted run's directory")
    p.add_argument("--method", default="b158", help="b158 (W1.58A8, default) or a48 (W1.58 with a4.8's activations)")
    p.add_argument("--sub_norm", action="store_true", help="insert the BitNet sub-norms (scale 1; BitDistill's SubLN)")
    p.add_argument(
        "--eval_text", action="append", help="glob(s) of text files to evaluate on (default: the validation split)"
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir (default: latest)")
    args = p.parse_args(argv)
    return run(args.workdir, args.out, args.method, args.sub_norm, args.eval_text, args.step)


if __name__ == "__main__":
    main()
