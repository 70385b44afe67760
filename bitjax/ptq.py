"""Post-training quantization of a trained full-precision run, layer by layer (GPTQ's sequential procedure).

    python -m bitjax.ptq --workdir runs/fp --method gptq --bits 3 [--group_size 128] \
        [--calib_sequences 128] [--calib_text 'notes/*.md' [--eval_text FILES]] [--step N] \
        [--act_order [--static_groups]] [--capture sequential|block] --out runs/fp_gptq3

Calibration: `--calib_sequences` sequences of config.seq_len tokens: by default the run's train split (its
first batches, so its corpus must be at hand), or with `--calib_text` any local text under the run's
tokenizer (each file a document followed by <eos>, as training lays them out; the first sequences of the
stream), which needs only the workdir. The embedding runs once; then for each decoder layer in order, on the calibration
activations that come out of the already-quantized earlier layers (and earlier projections of this
layer), each projection's input X is captured, H = hessian(X) = 2XᵀX/n (n sequences), and its kernel W (in, out) is
replaced by W̃:
    q/k/v_proj   share X = input_layernorm(h)           → one H for the three
    o_proj       X = the attention output (after attn_sub_norm), with q/k/v already quantized
    gate/up_proj share X = post_attention_layernorm(h)
    down_proj    X = act(gate)·up (after ffn_sub_norm), with gate/up already quantized
Only one H is held at a time. embed_tokens, lm_head and the norms stay full precision (as in GPTQ).
This default, `--capture sequential`, is GPTQ's `--true-sequential` mode (IST-DASLab/gptq llama.py:
q/k/v, then o, then gate/up, then down, each group's inputs recaptured after the previous groups are
quantized), the mode its README runs LLaMA in. `--capture block` is BiLLM's own procedure
(Aaronhuang-778/BiLLM run.py ``quant_sequential``; also GPTQ without `--true-sequential`): all four
inputs of a block are recorded in one pass of the block still unquantized (its input still from the
quantized blocks before it), then its seven kernels are quantized, then the block's output is
recomputed through them for the next block. It holds the block's four inputs at once (H still one at
a time).

Methods (bitjax.quant.ptq_methods): `rtn` (round to nearest on GPTQ's grid; H is not used to
quantize, only to report the same layer error as gptq's, so the two compare per projection), `gptq`
(bitjax.quant.gptq; `--act_order`: inputs by decreasing diag H, the reference's --act-order, off by
default as there; with groups, `--static_groups` fixes each original group's grid up front, the
reference's --static-groups, else the groups are consecutive in act order, the reference's default),
both k-bit asymmetric per output channel or per `--group_size` input rows; `decoupleq`
(bitjax.quant.decoupleq, the layer-wise stage of decoupleQ: W̃ = s·C + z per channel or group, `--iters`
rounds (default 4) of GPTQ for the codes C on the fixed grid then the closed-form least-squares (s, z)
under tr(ΔWᵀHΔW), each kept per channel only where it lowers that; `--act_order` on by default, as its
run_llama.sh; `--shrink` (default on, as the reference) starts the first round from the best shrunk
min-max grid; `--block_epochs N` adds the paper's block stage after each block's layer-wise stage: the
codes frozen, the block's s, z and norms trained N epochs (the reference: 4, Adam lr 1e-5, batch 1) on
the MSE to the unquantized block's output on the same input; ptq.json then also holds `block_errors`);
`billm` (bitjax.quant.billm, binarization: --bits 1, the default for it). The QAT recipes' names work too:
`--method rtn4` is `--method rtn --bits 4`, `--method gptq3` is `--method gptq --bits 3`.

Block-wise methods (kind 'block' in the registry; bitjax.quant.block_recon) learn per decoder block
instead, on the same calibration sequences: block i is trained on the outputs of the already-quantized
blocks < i to match the FP block's output on the FP chain (MSE), then its kernels are replaced by W̃.
`omniquant` (bitjax.quant.omniquant: learnable weight clipping; defaults 20 epochs at W3/W4, 40 at W2,
batch 1) and `efficientqat` (bitjax.quant.efficientqat: Block-AP, all weights and the grid trained;
2 epochs, batch 2; its E2E-QP stage then trains from the output: configs/e2e_qp.py), both k-bit asymmetric per channel or per `--group_size`. `--epochs` and
`--batch_size` (sequences a step) override the method's defaults, `--aug_loss` adds the reference's
second target (the FP block on the quantized chain's input), `--let` OmniQuant's LET beside LWC
(per-channel scales folded into norm→q/k/v, norm→gate/up, v→o, q·k; see bitjax.quant.omniquant); on 2 CPU cores a scaled-down setting
such as `--calib_sequences 16 --epochs 2` takes minutes, not hours. ptq.json then holds per block the
reconstruction loss at initialisation and after training (`block_errors`) instead of `layer_errors`.

--out becomes an ordinary run directory: checkpoints/ holding the run's config (still method 'fp')
with W̃ in place of each projection kernel (the fake-quantized weights are used as they are) and the
run's tokenizer, so bitjax.sample, bitjax.eval and bitjax.run.plan.restore read it as any run.
DIR/ptq.json holds eval_loss (nats/token) / eval_bpb / eval_ppl and those of the FP run, on the
validation split (the trainer's eval, same batches) or with --calib_text on the --eval_text files
(default: the calibration files; bitjax.eval.perplexity), `eval_data` saying which, and per projection
the layer error tr((W − W̃)ᵀ H (W − W̃)) = 2‖XW − XW̃‖²/n.
A --out that holds anything but an earlier PTQ output (marked .bitjax_ptq, and holding exactly what ptq wrote:
not a run trained on there) is refused, never deleted; --out may not be --workdir or lie in or around it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax import errors
from bitjax.data import text as text_lib
from bitjax.eval import perplexity
from bitjax.eval.scoring import Scorer
from bitjax.models import transformer
from bitjax.nn import layer_stack
from bitjax.quant import block_recon, ptq_methods
from bitjax.quant import decoupleq as decoupleq_lib
from bitjax.quant.gptq import hessian
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import config as run_config
from bitjax.run import plan as plan_lib
from bitjax.train import optim
from bitjax.train import workdir as workdir_lib
from bitjax.train.metrics import jsonable_metrics

MAX_CALIB_SEQUENCES = 4096  # GPTQ calibrates on 128; the bound keeps a typo from exhausting memory
MARKER = ".bitjax_ptq"  # in each --out this tool wrote: only those does it replace


# ============================================================================ quantizers
def quantize_kernel(
    w: jax.Array, h: jax.Array, method: str, bits: int, group_size: int | None, options: tuple = ()
) -> jax.Array:
    """W̃ (in, out) of kernel w (in, out) given its input Hessian h (in, in), by PTQ method `method` with
    its options ((key, value) pairs, ptq_methods.options; () for its defaults)."""
    return ptq_methods.get(method).quantize(w, h, bits, group_size, **dict(ptq_methods.options(method, dict(options))))


_quantize_kernel = jax.jit(quantize_kernel, static_argnums=(2, 3, 4, 5))  # compiled once per kernel shape


def layer_error(w: jax.Array, wq: jax.Array, h: jax.Array) -> float:
    """tr((W − W̃)ᵀ H (W − W̃)): the output error GPTQ minimises, = 2‖XW − XW̃‖²/n for H = hessian(X)
    (n calibration sequences)."""
    d = (w - wq).astype(jnp.float32)
    return float(jnp.sum(d * (h @ d)))


# ============================================================================ calibration
def calibration_tokens(train_data, n: int) -> np.ndarray:
    """The first `n` sequences of the train split (the trainer's batches 0, 1, …): int32 [n, seq_len]."""
    rows, step = [], 0
    while sum(len(r) for r in rows) < n:
        rows.append(np.asarray(train_data.batch(step, 0, 1)["inputs"]))
        step += 1
    return np.concatenate(rows)[:n]


def text_calibration_tokens(tokenizer, texts: list[str], n: int, seq_len: int) -> np.ndarray:
    """Up to `n` sequences int32 [≤ n, seq_len] from the start of the stream d0 <eos> d1 <eos> … of `texts`."""
    stream = np.concatenate([np.append(tokenizer.encode(t), tokenizer.eos_id) for t in texts]).astype(np.int32)
    rows = min(n, len(stream) // seq_len)
    if rows == 0:
        raise errors.UserError(
            f"--calib_text: the files hold {len(stream)} tokens; one calibration sequence needs config.seq_len={seq_len}"
        )
    return stream[: rows * seq_len].reshape(rows, seq_len)


def read_texts(files: list[str], encoding: str = text_lib.DEFAULT_ENCODING) -> list[str]:
    """The files as training reads them (config.data.encoding; a binary or undecodable file is a DataError)."""
    return [text_lib.read_text(path, encoding) for path in files]


def run_data(plan: plan_lib.Plan):
    """(train, eval) data of the run's own corpus (the trainer's batches), refused if its tokenizer changed."""
    from bitjax.data import pipeline  # tfds and grain: only when the train split is read

    try:
        train, evaluation, tok = pipeline.get_datasets(run_config.data_config(plan.config))
    except errors.UserError as e:
        raise errors.UserError(f"{e} (calibrate on other text with --calib_text FILES)") from None
    if tok.name != plan.tokenizer.name:
        raise errors.UserError(
            f"the run's corpus now gives tokenizer {tok.name}, not its own {plan.tokenizer.name}; "
            "calibrate on other text with --calib_text FILES"
        )
    return train, evaluation


class _Recorder(nnx.Module):
    """Stands in for a projection: records its input, returns the projection's output."""

    def __init__(self, dense):
        self.dense, self.inputs = dense, None

    def __call__(self, x):
        self.inputs = nnx.data(x)  # an array attribute of an NNX module must be declared data
        return self.dense(x)


@contextlib.contextmanager
def captured(owner: nnx.Module, name: str):
    """Within the block, owner.<name>'s input is recorded (yields the recorder; read `.inputs`)."""
    dense = getattr(owner, name)
    rec = _Recorder(dense)
    setattr(owner, name, rec)
    try:
        yield rec
    finally:
        setattr(owner, name, dense)


# ============================================================================ the pass
CAPTURES = ("sequential", "block")  # see the module docstring


def quantize_model(
    model: transformer.Transformer,
    tokens: np.ndarray,
    method: str,
    bits: int,
    group_size: int | None,
    log=print,
    options: tuple = (),
    capture: str = "sequential",
) -> dict[str, float]:
    """Quantizes every projection kernel of `model` in place, in order; returns {param path: layer error}.

    capture: 'sequential' (each projection's input after this block's earlier projections are
    quantized: GPTQ's --true-sequential) or 'block' (all of a block's inputs from one pass of the block
    still unquantized: BiLLM's run.py, GPTQ without --true-sequential); both take the block's input
    from the quantized blocks before it. options: the method's ((key, value) pairs).
    """
    if capture not in CAPTURES:
        raise ValueError(f"capture {capture!r}: one of {', '.join(CAPTURES)}")
    cfg_l = tokens.shape[1]
    cos, sin = transformer.rope_cos_sin(jnp.arange(cfg_l), model.head_dim, model.rope_theta)
    errs = {}

    def quantize(prefix, owner, names, x):
        h = hessian(x)  # the only Hessian alive
        for name in names:
            dense = getattr(owner, name)
            w = dense.kernel[...]
            wq = _quantize_kernel(w, h, method, bits, group_size, options)
            errs[f"{prefix}.{name}.kernel"] = layer_error(w, wq, h)
            dense.kernel[...] = wq

    x = model.embed_tokens(jnp.asarray(tokens))  # [n, L, D]
    for i, layer in enumerate(model.layers):
        t0 = time.perf_counter()
        x = quantize_block(layer, i, x, cos, sin, quantize, capture)
        log(
            f"layer {i}: quantized in {time.perf_counter() - t0:.1f}s; error tr(ΔᵀHΔ) "
            + ", ".join(f"{k.split('.')[-2]} {v:.3g}" for k, v in errs.items() if k.startswith(f"layers.{i}."))
        )
    return errs


def quantize_block(layer, i: int, x: jax.Array, cos, sin, quantize, capture: str) -> jax.Array:
    """Decoder block `layer` (number i) on its input x [n, L, D]: each projection group's input captured as
    `capture` says and passed to quantize(prefix, owner, names, X), which replaces those kernels; returns
    the block's output through its quantized projections."""
    qkv, gate_up = ("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")
    attn, mlp = layer.self_attn, layer.mlp
    a, m = f"layers.{i}.self_attn", f"layers.{i}.mlp"
    u = layer.input_layernorm(x)
    if capture == "block":  # one pass of the unquantized block records all four inputs, then quantize
        with captured(attn, "o_proj") as rec_o, captured(mlp, "down_proj") as rec_d:
            u_mlp = layer.post_attention_layernorm(x + attn(u, cos, sin)[0])
            mlp(u_mlp)
        inputs = ((attn, a, qkv, u), (attn, a, ("o_proj",), rec_o.inputs))
        inputs += ((mlp, m, gate_up, u_mlp), (mlp, m, ("down_proj",), rec_d.inputs))
        del u_mlp
        for owner, prefix, names, xin in inputs:
            quantize(prefix, owner, names, xin)
        del inputs
        x = x + attn(u, cos, sin)[0]  # the block's output, now through its quantized projections
        return x + mlp(layer.post_attention_layernorm(x))
    quantize(a, attn, qkv, u)
    with captured(attn, "o_proj") as rec:
        attn(u, cos, sin)
    quantize(a, attn, ("o_proj",), rec.inputs)
    x = x + attn(u, cos, sin)[0]
    u = layer.post_attention_layernorm(x)
    quantize(m, mlp, gate_up, u)
    with captured(mlp, "down_proj") as rec:
        mlp(u)
    quantize(m, mlp, ("down_proj",), rec.inputs)
    return x + mlp(u)


_decoupleq_codes = jax.jit(decoupleq_lib.decoupleq_codes, static_argnums=(2, 3, 4, 5, 6, 7))


def decoupleq_block_model(
    model: transformer.Transformer,
    tokens: np.ndarray,
    bits: int,
    group_size: int | None,
    options: tuple,
    log=print,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """decoupleQ with its block stage (the reference's llama.py with --blockwise-minimize-lr > 0): per
    block, on its input x from the blocks before (each already through both stages), the layer-wise stage
    (sequential capture; codes C, s, z kept), then with C frozen the block's (s, z) and norms trained
    (bitjax.quant.decoupleq.block_method, `block_epochs` epochs of batch 1 through
    bitjax.quant.block_recon) on the MSE to the *unquantized* block's output on that same x (the
    reference's label, recorded before the block is quantized). Returns (layer errors of the layer-wise
    stage, {'layers.i': {'init', 'final'}} block losses)."""
    o = dict(options)
    cos, sin = transformer.rope_cos_sin(jnp.arange(tokens.shape[1]), model.head_dim, model.rope_theta)
    stage: dict = {}
    method = decoupleq_lib.block_method(stage)  # one method: its compiled steps serve every block
    errs, block_errs = {}, {}

    def quantize(prefix, owner, names, xin):
        h = hessian(xin)
        block = prefix.rsplit(".", 1)[1]  # 'self_attn' | 'mlp'
        for name in names:
            dense = getattr(owner, name)
            w = dense.kernel[...]
            c, sc, z, _ = _decoupleq_codes(w, h, bits, group_size, o["iters"], o["act_order"], 0.01, o["shrink"])
            g = w.shape[0] // sc.shape[0]
            wq = (jnp.repeat(sc, g, 0) * c.astype(jnp.float32) + jnp.repeat(z, g, 0)).astype(w.dtype)
            errs[f"{prefix}.{name}.kernel"] = layer_error(w, wq, h)
            dense.kernel[...] = wq
            for key, v in (("codes", c), ("s", sc), ("z", z)):
                stage.setdefault(key, {}).setdefault(block, {})[name] = v

    x = model.embed_tokens(jnp.asarray(tokens))  # [n, L, D]
    for i, layer in enumerate(model.layers):
        t0 = time.perf_counter()
        _, state = nnx.split(layer)
        fp = nnx.to_pure_dict(state)
        stage.clear()
        quantize_block(layer, i, x, cos, sin, quantize, "sequential")
        nnx.replace_by_pure_dict(state, fp)  # back to FP: the target's block, and what θ is applied to
        nnx.update(layer, state)
        _, x, init_loss, final_loss = block_recon.reconstruct_block(
            layer, x, x, cos, sin, method, bits, group_size, o["block_epochs"], 1
        )
        block_errs[f"layers.{i}"] = {"init": init_loss, "final": final_loss}
        log(f"layer {i}: both stages in {time.perf_counter() - t0:.1f}s; block loss {init_loss:.4g} → {final_loss:.4g}")
    return errs, block_errs


def reconstruct_model(
    model: transformer.Transformer,
    tokens: np.ndarray,
    method: str,
    bits: int,
    group_size: int | None,
    epochs: int | None = None,
    batch_size: int | None = None,
    aug_loss: bool = False,
    let: bool = False,
    log=print,
) -> dict[str, dict[str, float]]:
    """Quantizes every decoder block of `model` (loop layout) in place by block reconstruction
    (bitjax.quant.block_recon); returns {'layers.i': {'init', 'final'}} block losses. let: the method's
    'let' variant (OmniQuant's LWC + LET)."""
    cos, sin = transformer.rope_cos_sin(jnp.arange(tokens.shape[1]), model.head_dim, model.rope_theta)
    x = model.embed_tokens(jnp.asarray(tokens))  # [n, L, D]
    block = ptq_methods.get(method).block
    block = dict(block.variants)["let"] if let else block
    return block_recon.reconstruct(
        model.layers, x, cos, sin, block, bits, group_size, epochs, batch_size, aug_loss, log
    )


# a registered method's kind → (the pass that quantizes the model with it, the ptq.json key of its errors)
PASSES = {"layer": (quantize_model, "layer_errors"), "block": (reconstruct_model, "block_errors")}


# ============================================================================ output
def fresh_out(out: str) -> None:
    """Makes `out` an empty directory, deleting only an earlier output of this tool."""
    workdir_lib.fresh(
        out,
        MARKER,
        f"--out {out} exists and is not a bitjax.ptq output (it may hold a real "
        f"run); nothing was deleted. Choose another --out.",
    )


def write_output_run(out, marker, plan, step, state, meta, info, q_eval, fp_eval, extra=None) -> dict:
    """Writes a tool's output run (bitjax.ptq's, bitjax.convert's) and returns what OUT/ptq.json holds.

    OUT/checkpoints: `state` at `step` with `meta` (the run's stored config, plus the tool's `info`) and
    the tokenizer's metadata; OUT/tokenizer: the tokenizer, so OUT restores alone; OUT/ptq.json: `info`,
    eval_loss / eval_bpb / eval_ppl of `q_eval` and fp_* of `fp_eval`, then `extra`; OUT sealed with
    `marker` last (a later run of the tool replaces OUT only while it holds just this).
    """
    meta = {**meta, "tokenizer": plan_lib.tokenizer_meta(plan.tokenizer)}
    plan_lib.store_tokenizer(out, plan.tokenizer)
    with ckpt_lib.Checkpointer(os.path.join(out, "checkpoints"), keep=1) as ckpt:
        ckpt.save(int(step), state, meta, force=True)
        ckpt.wait()
    keys = ("eval_loss", "eval_bpb", "eval_ppl")
    result = {**info, **{k: q_eval[k] for k in keys}, **{f"fp_{k}": fp_eval[k] for k in keys}, **(extra or {})}
    with open(os.path.join(out, "ptq.json"), "w") as f:
        json.dump(jsonable_metrics(result), f, indent=1)
    workdir_lib.seal(out, marker)
    return result


def check_out_apart(workdir: str, out: str) -> None:
    """UserError if --out is --workdir, or one holds the other, compared as real paths (a symlink to the
    run is the run: issue 29.3); replacing --out must never delete the trained run."""
    src, dst = os.path.realpath(workdir), os.path.realpath(out)
    if src == dst:
        raise errors.UserError(
            f"--out {out} is --workdir {workdir} (the same directory): the trained run is never written"
        )
    if os.path.commonpath([src, dst]) in (src, dst):
        raise errors.UserError(f"--out {out} and --workdir {workdir} lie one inside the other: choose another --out")


def run(
    workdir: str,
    method: str,
    bits: int | None,
    out: str,
    group_size: int | None = None,
    calib_sequences: int = 128,
    step: int | None = None,
    calib_text: list[str] | None = None,
    eval_text: list[str] | None = None,
    options: dict | None = None,
    capture: str = "sequential",
    epochs: int | None = None,
    batch_size: int | None = None,
    aug_loss: bool = False,
    let: bool = False,
) -> dict:
    """The whole pipeline (see the module docstring); returns what it writes to OUT/ptq.json.

    calib_text, eval_text: glob patterns of text files (None: the run's train and validation splits).
    options: the method's own options ({'act_order': True}, …; None values: its defaults).
    capture: 'sequential' | 'block' (see the module docstring).
    epochs, batch_size: a block-wise method's training (None: the method's defaults); aug_loss: its second
    target (bitjax.quant.block_recon); let: OmniQuant's LET beside LWC.
    """
    try:
        method, bits = ptq_methods.resolve(method, bits)
    except ValueError as e:
        raise errors.UserError(f"--method {method!r}{'' if bits is None else f' --bits {bits}'}: {e}") from None
    try:
        opts = ptq_methods.options(method, options)
    except ValueError as e:
        raise errors.UserError(str(e)) from None
    for key in ("iters", "block_epochs"):
        if dict(opts).get(key, 0) < 0:
            raise errors.UserError(f"--{key} {dict(opts)[key]}: must be ≥ 0")
    if dict(opts).get("block_epochs") and capture != "sequential":
        raise errors.UserError("--block_epochs: decoupleQ's block stage captures sequentially (no --capture block)")
    if dict(opts).get("static_groups") and group_size is None:
        raise errors.UserError("--static_groups fixes the grids of groups: it needs --group_size")
    if capture not in CAPTURES:
        raise errors.UserError(f"--capture {capture!r}: one of {', '.join(CAPTURES)}")
    if group_size is not None and group_size < 1:
        raise errors.UserError(f"--group_size {group_size}: must be ≥ 1")
    if not 1 <= calib_sequences <= MAX_CALIB_SEQUENCES:  # each captured input is held in memory
        raise errors.UserError(f"--calib_sequences {calib_sequences}: must be in [1, {MAX_CALIB_SEQUENCES}]")
    spec = ptq_methods.get(method)
    given = (("epochs", epochs), ("batch_size", batch_size), ("aug_loss", aug_loss or None), ("let", let or None))
    training = {k: v for k, v in given if v is not None}
    if training and spec.block is None:
        raise errors.UserError(
            f"--{next(iter(training))}: {method} is layer-wise (no training); only block-wise methods take it"
        )
    if spec.block is not None and capture != "sequential":
        raise errors.UserError(f"--capture {capture}: {method} is block-wise (it captures no projection inputs)")
    if let and "let" not in dict(spec.block.variants):
        raise errors.UserError(f"--let: {method} has no LET (OmniQuant's learnable equivalent transformation)")
    if epochs is not None and epochs < 0:
        raise errors.UserError(f"--epochs {epochs}: must be ≥ 0")
    if batch_size is not None and not 1 <= batch_size <= calib_sequences:
        raise errors.UserError(f"--batch_size {batch_size}: must be in [1, --calib_sequences {calib_sequences}]")
    check_out_apart(workdir, out)
    if eval_text and not calib_text:
        raise errors.UserError("--eval_text goes with --calib_text (without it, the validation split is evaluated)")
    with errors.as_user_errors():  # a pattern that matches no file
        calib_files = perplexity.expand_paths(calib_text) if calib_text else None
        eval_files = perplexity.expand_paths(eval_text) if eval_text else calib_files

    # one device: the calibration pass is eager and small next to training
    plan, params = plan_lib.restore_one_device(workdir, step)
    step = plan.step
    with ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints")) as src:
        meta = src.restore_metadata(step)
    mcfg = plan.config.model
    if mcfg.name != "transformer" or mcfg.quant.method != "fp":
        raise errors.UserError(
            f"--workdir {workdir} trained {mcfg.name} with quant.method={mcfg.quant.method!r}: "
            f"PTQ starts from a full-precision ('fp') transformer run"
        )
    if group_size is not None:
        dims = {mcfg.d_model, mcfg.mlp_dim, mcfg.n_heads * (mcfg.head_dim or mcfg.d_model // mcfg.n_heads)}
        grouped = spec.grouped
        if not grouped or any(d % group_size for d in dims):
            raise errors.UserError(
                f"--group_size {group_size}: "
                + (
                    f"{method} has no groups"
                    if not grouped
                    else f"must divide every projection's input size {sorted(dims)}"
                )
            )
    if calib_files is None:
        train_data, eval_data = run_data(plan)
        tokens = calibration_tokens(train_data, calib_sequences)
        eval_step = plan.eval_step()
        evaluate = lambda p: plan_lib.evaluate(plan, eval_step, p, eval_data)
    else:
        encoding = plan.config.data.get("encoding", text_lib.DEFAULT_ENCODING)
        tokens = text_calibration_tokens(
            plan.tokenizer, read_texts(calib_files, encoding), calib_sequences, plan.config.seq_len
        )
        eval_texts = read_texts(eval_files, encoding)

        def evaluate(p):
            m = perplexity.score_texts(Scorer(plan, p), eval_texts)
            return {"eval_loss": m["nats_per_token"], "eval_bpb": m["bits_per_byte"], "eval_ppl": m["token_ppl"]}

    fresh_out(out)  # every check above passed: now the disk is touched

    fp_eval = evaluate(params)
    model = layer_stack.unstack_layers(plan.model(params))  # quantized layer by layer
    print(
        f"{method} {bits}-bit{f', groups of {group_size}' if group_size else ''} on {len(tokens)} calibration "
        f"sequences × {tokens.shape[1]} tokens, {mcfg.n_layers} layers, {capture} capture"
        + "".join(f", {k}={v}" for k, v in opts)
    )
    quantize_pass, errors_key = PASSES[spec.kind]
    extra = {}
    if spec.kind == "layer" and dict(opts).get("block_epochs"):  # decoupleQ's block stage after its layer-wise one
        errs, extra["block_errors"] = decoupleq_block_model(model, tokens, bits, group_size, opts)
    elif spec.kind == "layer":
        errs = quantize_model(model, tokens, method, bits, group_size, options=opts, capture=capture)
    else:
        errs = quantize_pass(model, tokens, method, bits, group_size, **training)
    qparams = layer_stack.layers_like(nnx.to_pure_dict(nnx.state(model)), params)  # the run's layout
    q_eval = evaluate(qparams)

    tx, _ = optim.make_optimizer(plan.config.optim, plan.config.total_steps)
    state = optim.train_state(tx, qparams, step)  # a fresh optimizer, as the trainer would start from it
    ptq = {
        "method": method,
        "bits": bits,
        "group_size": group_size,
        "options": dict(opts),
        "capture": capture,
        "calib_sequences": len(tokens),
        "calib_data": "train split" if calib_files is None else calib_files,
        "eval_data": "validation split" if eval_files is None else eval_files,
        "source": os.path.abspath(workdir),
        "source_step": int(step),
    }
    if spec.block is not None:  # the training it ran (the defaults resolved)
        ptq["epochs"] = spec.block.default_epochs(bits) if epochs is None else epochs
        ptq["batch_size"] = spec.block.default_batch_size if batch_size is None else batch_size
        ptq["aug_loss"] = aug_loss
        if let:
            ptq["let"] = True
    # the run's own config (its mesh, not this process's) and tokenizer, copied along: OUT restores alone
    meta = {**meta, "ptq": ptq}
    result = write_output_run(out, MARKER, plan, step, state, meta, ptq, q_eval, fp_eval, {errors_key: errs, **extra})
    print(
        f"eval bits/byte {q_eval['eval_bpb']:.4f} (fp {fp_eval['eval_bpb']:.4f}), eval loss "
        f"{q_eval['eval_loss']:.4f} (fp {fp_eval['eval_loss']:.4f}); wrote {out}/checkpoints and {out}/ptq.json"
    )
    return result


@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a trained full-precision run")
    p.add_argument(
        "--method",
        required=True,
        help="rtn | gptq | decoupleq | billm | omniquant | efficientqat, or with the bits in the name as QAT's: "
        "rtn4, gptq3",
    )
    p.add_argument(
        "--bits",
        type=int,
        default=None,
        help="2..8 for rtn/gptq/decoupleq/omniquant/efficientqat (default 4); billm: 1",
    )
    p.add_argument("--group_size", type=int, default=None, help="input rows per (scale, zero) (default: per channel)")
    p.add_argument("--calib_sequences", type=int, default=128, help="calibration sequences (of config.seq_len tokens)")
    p.add_argument(
        "--calib_text", action="append", help="glob(s) of text files to calibrate on (default: the train split)"
    )
    p.add_argument(
        "--eval_text", action="append", help="with --calib_text: glob(s) of text files to evaluate on (default: those)"
    )
    p.add_argument(
        "--capture",
        choices=CAPTURES,
        default="sequential",
        help="sequential: each projection's input after this block's earlier ones are quantized (GPTQ's "
        "--true-sequential); block: all from one pass of the unquantized block (BiLLM's procedure)",
    )
    p.add_argument(
        "--act_order",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gptq, decoupleq: quantize inputs by decreasing diag H (default: gptq off, decoupleq on, as their references)",
    )
    p.add_argument(
        "--static_groups",
        action="store_true",
        default=None,
        help="gptq with --group_size: every group's grid fixed up front on the original rows (the reference's)",
    )
    p.add_argument(
        "--iters",
        type=int,
        default=None,
        help="decoupleq: rounds of (GPTQ for the codes, closed-form scale/zero) (default 4)",
    )
    p.add_argument(
        "--shrink",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decoupleq: start the first round from the best shrunk min-max grid, as the reference (default on)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="block-wise methods: epochs per block (default: the method's)"
    )
    p.add_argument(
        "--batch_size", type=int, default=None, help="block-wise methods: sequences a step (default: the method's)"
    )
    p.add_argument(
        "--aug_loss",
        action="store_true",
        help="block-wise methods: also match the FP block on the quantized input (OmniQuant's --aug_loss)",
    )
    p.add_argument(
        "--let", action="store_true", help="omniquant: learnable equivalent transformation beside LWC (scales only)"
    )
    p.add_argument(
        "--block_epochs",
        type=int,
        default=None,
        help="decoupleq: epochs of its block stage (s, z, norms trained per block; the reference: 4) (default 0: none)",
    )
    p.add_argument("--step", type=int, default=None, help="checkpoint step of --workdir (default: latest)")
    p.add_argument("--out", required=True, help="the quantized run's directory")
    args = p.parse_args(argv)
    return run(
        args.workdir,
        args.method,
        args.bits,
        args.out,
        args.group_size,
        args.calib_sequences,
        args.step,
        args.calib_text,
        args.eval_text,
        {
            "act_order": args.act_order,
            "static_groups": args.static_groups,
            "iters": args.iters,
            "block_epochs": args.block_epochs,
            "shrink": args.shrink,
        },
        args.capture,
        args.epochs,
        args.batch_size,
        args.aug_loss,
        args.let,
    )


if __name__ == "__main__":
    main()
