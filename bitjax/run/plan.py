"""A run as one object: its config resolved once into a frozen :class:`Plan`, or restored from its workdir.

    plan = resolve(config, tokenizer)          # stages, quant tables, model, abstract params, shardings
    plan, params = restore(workdir, step)      # from the workdir alone: no corpus opened, no step traced

A workdir is self-contained: checkpoints/<step>/meta holds the config, the data fingerprint, the
quantization recipe and the tokenizer's identity; a trained (sentencepiece) tokenizer's model file is
copied to tokenizer/<name>.model and fingerprinted by its sha256 (the byte tokenizer needs nothing). So a
workdir copied to another machine samples, evaluates, exports and calibrates PTQ without its corpus.

The trainer's Setup is a plan + data + optimizer + compiled steps (bitjax.train.trainer); sample, eval,
export, ptq, import_hf, a distillation teacher and init_from read runs through this module only.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import logging
import math
import os
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from ml_collections import ConfigDict

from bitjax import errors, models
from bitjax.data import tokenizers as tok_lib
from bitjax.nn import layer_stack, sharding
from bitjax.nn.bitdense import BitDense
from bitjax.quant import warmup
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import config as run_config
from bitjax.run import mesh as mesh_lib

log = logging.getLogger("bitjax")
# config.model.vocab_size=None is the tokenizer's, padded to a multiple of this so the vocab axis shards
# evenly and matmuls tile well; the padding ids never occur as targets
VOCAB_MULTIPLE = 128
TOKENIZER_DIR = "tokenizer"  # in the workdir: the copy of a trained tokenizer's model file


def same_tree(a, b) -> bool:
    """Whether two parameter trees have the same structure, shapes and dtypes (values aside)."""
    shapes = lambda tree: jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)
    return jax.tree.structure(a) == jax.tree.structure(b) and shapes(a) == shapes(b)


def adopt_params(params, want, fresh, family: str, who: str, plan: Plan | None = None) -> tuple[Any, list[str]]:
    """(`params` as a tree like `want`, the paths this model supplied itself): another run's parameters for
    this model.

    params: pure dict of the source run; want: this model's abstract pure dict; fresh: this model's own
    initial parameters (or None). Per-layer and stacked (scan_layers) layouts are converted. The trees
    must match in paths, shapes and dtypes, but for two kinds of parameters the source may lack:
    those of the modules family `family` names insertable (bitjax.models.insertable: the transformer's
    attn_sub_norm / ffn_sub_norm, which converting an fp Llama to a BitNet layout adds), taken from
    `fresh` (RMSNorm scale 1); and learned quantizer parameters (a BitDense's `qparams`: FBI's α, β,
    OneBit's g, h, ParetoQ's α, E2E-QP's step change), initialised by the layer's own quantizer from the
    *adopted* kernel, as a fresh layer initialises them from its kernel (needs `plan`, this run's). Both
    are returned by path. Anything else that differs raises UserError naming `who`.
    """
    params = layer_stack.layers_like(params, want)
    flat = lambda tree: traverse_util.flatten_dict(tree, keep_empty_nodes=True)  # {} (no qparams) kept
    src, dst = flat(params), flat(want)
    insertable = set(models.insertable(family))
    added = sorted((k for k in dst if k not in src), key=str)
    learned = [k for k in added if "qparams" in map(str, k)]
    refused = [
        k
        for k in added
        if fresh is None or not (insertable.intersection(map(str, k)) or (k in learned and plan is not None))
    ]
    refused += sorted((k for k in src if k not in dst), key=str)
    common = [k for k in dst if k in src and dst[k] is not traverse_util.empty_node]
    if refused or not same_tree([src[k] for k in common], [dst[k] for k in common]):
        named = "" if not refused else f"; it lacks or adds {', '.join('.'.join(map(str, k)) for k in refused[:4])}"
        raise errors.UserError(
            f"{who}: its parameters differ from this run's model (config.model shapes and learned quantizer "
            f"parameters must match the source run's{named})"
        )
    if added:
        fresh = flat(fresh)
        params = traverse_util.unflatten_dict({**src, **{k: fresh[k] for k in added}})
        if learned:
            params = learned_from_kernels(plan, params, learned)
    return params, [".".join(map(str, k)) for k in added]


def learned_from_kernels(plan: Plan, params, paths):
    """`params` (a pure dict of `plan`'s model) with the learned quantizer parameters at `paths` (flat
    keys) recomputed by each BitDense's quantizer init from that layer's kernel in `params`."""
    model = plan.model(params)
    want = {tuple(map(str, k)) for k in paths}
    for path, module in nnx.iter_graph(model):
        if not isinstance(module, BitDense) or not len(module.qparams):
            continue
        names = [n for n in module.qparams if (*map(str, path), "qparams", n) in want]
        if names:
            values = module.quant.init_learned(module.kernel[...])
            for n in names:
                module.qparams[n][...] = values[n][0].astype(module.qparams[n][...].dtype)
    return nnx.to_pure_dict(nnx.state(model))


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """(sum of masked token NLL in nats, number of masked tokens); logits [B, L, V] any float."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = sharding.constrain(-jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0], ("batch", "length"))
    return jnp.sum(nll * mask), jnp.sum(mask)


def chunked_cross_entropy(a, w, targets, mask, chunk: int, round_dtype=None):
    """cross_entropy of logits = float32(a · w) without the [B, L, V] logits: the vocabulary in chunks.

    a [B, L, D], w [D, V] (a model's head_operands); chunk C: logits [B, L, C] at a time, by lax.scan with
    an online log-sum-exp (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax"):
    m ← max(m, max_c z), s ← s·e^(m_old − m) + Σ_c e^(z − m); nll = m + log s − z[target]. Each chunk is
    rematerialised in the backward (jax.checkpoint), so neither pass holds more than one chunk's logits.
    V is padded to a multiple of C with columns that never count. round_dtype: logits rounded to it
    before float32 (a bf16 BitDense head's output). Returns (Σ masked NLL, number of masked tokens).
    """
    d, v = w.shape
    n = -(-v // chunk)
    w = jnp.pad(w, ((0, 0), (0, n * chunk - v))).reshape(d, n, chunk).transpose(1, 0, 2)  # [n, D, C]
    b, length = targets.shape
    cols = jnp.arange(chunk)

    @jax.checkpoint
    def body(carry, xs):
        m, s, zt = carry
        wi, i = xs
        z = jnp.einsum("bld,dc->blc", a, wi, preferred_element_type=jnp.float32)
        if round_dtype is not None:
            z = z.astype(round_dtype).astype(jnp.float32)
        z = jnp.where(i * chunk + cols < v, z, -jnp.inf)  # padding columns
        m_new = jnp.maximum(m, jnp.max(z, axis=-1))
        s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(z - m_new[..., None]), axis=-1)
        zt = zt + jnp.sum(jnp.where(cols == (targets - i * chunk)[..., None], z, 0.0), axis=-1)
        return (m_new, s, zt), None

    init = (jnp.full((b, length), -jnp.inf), jnp.zeros((b, length)), jnp.zeros((b, length)))
    init = tuple(sharding.constrain(x, ("batch", "length")) for x in init)
    (m, s, zt), _ = jax.lax.scan(body, init, (w, jnp.arange(n)))
    nll = sharding.constrain(m + jnp.log(s) - zt, ("batch", "length"))
    return jnp.sum(nll * mask), jnp.sum(mask)


def loss_sums(model, batch, chunk: int = 0):
    """(Σ masked NLL, masked tokens) of `model` on `batch`: from its logits (chunk 0), or with the head's
    matmul in vocabulary chunks of `chunk` (config.loss_vocab_chunk; a model with `head_operands`)."""
    if not chunk:
        return cross_entropy(model(batch["inputs"]), batch["targets"], batch["mask"])
    if not hasattr(model, "head_operands"):
        raise ValueError(
            f"config.loss_vocab_chunk={chunk}: model {type(model).__name__} has no chunked head; set it to 0"
        )
    a, w, round_dtype = model.head_operands(model.hidden(batch["inputs"]))
    return chunked_cross_entropy(a, w, batch["targets"], batch["mask"], chunk, round_dtype)


# ============================================================================ the plan
@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Everything a run config determines before data or compilation.

    config: the run config with config.model.vocab_size resolved (a copy: the caller's is not changed).
    tokenizer: the run's (None for a teacher or init_from source, whose tokenizer is not needed).
    stages: ((first step, single-stage model config), …): one unless the method trains in stages (a48
      after b158), all sharing one parameter tree. quant_tables: per stage {layer role: spec text}.
    graphdefs: per stage the model's NNX graph. abstract_params: nnx.State of ShapeDtypeStructs.
    param_shardings: pure dict of NamedShardings (on `mesh` by `rules`), leaf for leaf.
    step: the checkpoint a restored plan came from (None: resolved from a config).
    """

    config: ConfigDict
    tokenizer: tok_lib.Tokenizer | None
    mesh: Mesh
    rules: tuple
    stages: tuple
    quant_tables: tuple
    graphdefs: tuple
    abstract_params: Any
    param_shardings: Any
    step: int | None = None

    @property
    def graphdef(self):
        """The final stage's model graph (what sample, eval and export run)."""
        return self.graphdefs[-1]

    @property
    def quant_table(self) -> dict[str, str]:
        """The final stage's {layer role: spec}: stored with checkpoints as the run's quant_recipe."""
        return self.quant_tables[-1]

    @property
    def num_params(self) -> int:
        return sum(math.prod(x.shape) for x in jax.tree.leaves(self.abstract_params))

    @property
    def batch_sharding(self) -> NamedSharding:
        return mesh_lib.batch_sharding(self.mesh, self.rules)

    def stage_at(self, step: int) -> int:
        """Index of the stage that trains step `step` (0-based) and evaluates after `step` steps."""
        return max(i for i, (start, _) in enumerate(self.stages) if start <= step)

    def build(self, key) -> nnx.Module:
        """The final stage's model with freshly initialised parameters (trace it under jit)."""
        return models.get_model(self.config.model.name)(self.stages[-1][1], rngs=nnx.Rngs(params=key))

    def model(self, params) -> nnx.Module:
        """A concrete NNX model of the final stage holding `params` (for sampling and export)."""
        return nnx.merge(self.graphdef, params)

    def params_target(self):
        """The parameters as a restore target: ShapeDtypeStructs with this plan's shardings."""
        return ckpt_lib.abstract_with_shardings(nnx.to_pure_dict(self.abstract_params), self.param_shardings)

    def global_batch(self, np_batch) -> dict[str, jax.Array]:
        """This process's rows of a batch → global jax.Arrays sharded over the batch axes."""
        return mesh_lib.shard_batch(np_batch, self.mesh, self.rules)

    def logical_rules(self):
        """Context for tracing a step: the models' activation constraints (bitjax.nn.sharding) map their
        logical axes to this plan's mesh by its rules."""
        return sharding.logical_rules(self.mesh, functools.partial(mesh_lib.logical_to_pspec, rules=self.rules))

    def quant_warmup(self, step):
        """Context for tracing the student's forward at train step `step` (the train state's, 0-based): with
        config.model.quant.warmup_steps = N > 0 its quantizers are faded in by λ = min(1, step / N)
        (bitjax.quant.warmup); with 0 (the default) nothing changes. Evaluation runs outside it (λ = 1)."""
        n = self.config.model.quant.get("warmup_steps", 0)
        return warmup.mixing(warmup.schedule(step, n)) if n else contextlib.nullcontext()

    def eval_step(self, stage: int = -1):
        """jit(params, batch) → (Σ masked NLL, masked tokens) of stage `stage`'s model, on this plan's shardings."""
        graphdef = self.graphdefs[stage]

        def eval_step(params, batch):
            with self.logical_rules():
                return loss_sums(nnx.merge(graphdef, params), batch, self.config.get("loss_vocab_chunk", 0))

        repl = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(eval_step, in_shardings=(self.param_shardings, self.batch_sharding), out_shardings=repl)

    def describe(self) -> str:
        """Per stage a 'quantization from step S: method M' line, then one 'role: spec' line per layer role."""
        lines = []
        for (start, cfg), table in zip(self.stages, self.quant_tables):
            lines.append(
                f"quantization from step {start}: method {cfg.quant.method}"
                + (f", rules {cfg.quant.rules!r}" if cfg.quant.rules else "")
            )
            lines += [f"  {role:>10}: {spec}" for role, spec in table.items()]
        return "\n".join(lines)


def resolve(
    config: ConfigDict,
    tokenizer: tok_lib.Tokenizer | None,
    devices=None,
    *,
    mesh: Mesh | dict | None = None,
    rules=None,
    step: int | None = None,
) -> Plan:
    """`config` → its :class:`Plan` (ValueError naming the field on a bad config; nothing compiles).

    The trainer validates the whole run config first (bitjax.run.config.validate); a restored config
    passed it when it was trained. tokenizer: fills config.model.vocab_size=None (None: the config must
    set it). mesh: a Mesh, or axis sizes {data, fsdp, tensor} (default config.mesh) on `devices` (default
    all). rules: logical → mesh axes (default config.axis_rules).
    """
    config = copy.deepcopy(config)
    if not isinstance(mesh, Mesh):
        mesh = mesh_lib.make_mesh(config.mesh if mesh is None else ConfigDict(dict(mesh)), devices)
    rules = mesh_lib.rules_from_config(config.axis_rules) if rules is None else rules
    mcfg = config.model
    if tokenizer is not None:
        with mcfg.unlocked():
            if mcfg.get("vocab_size") in (None, 0):
                mcfg.vocab_size = -(-tokenizer.vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
        if mcfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(
                f"config.model.vocab_size={mcfg.vocab_size} is smaller than the tokenizer's "
                f"{tokenizer.vocab_size}; set it to None to use the tokenizer's size"
            )

    # Abstract first, so shapes are checked against the mesh before compiling. A method trained in
    # stages has one model config per stage; the stage is a function of the step alone, so resume is exact.
    model_cls = models.get_model(mcfg.name)
    stages = tuple(models.stage_configs(mcfg, config.total_steps))
    splits = [
        nnx.split(nnx.eval_shape(lambda c=c: model_cls(c, rngs=nnx.Rngs(params=jax.random.key(0))))) for _, c in stages
    ]
    abstract = splits[-1][1]
    for (start, c), (_, other) in zip(stages, splits):
        if not same_tree(other, abstract):
            raise ValueError(
                f"config.model.quant.stage1={c.quant.method!r} (steps from {start}) has other "
                f"parameters than config.model.quant.method={mcfg.quant.method!r}: both "
                f"stages must share one parameter tree; choose another stage1 or 'none'"
            )
    mesh_lib.check_divisible(abstract, mesh, rules, hints=models.size_hints(mcfg.name))
    return Plan(
        config=config,
        tokenizer=tokenizer,
        mesh=mesh,
        rules=rules,
        stages=stages,
        quant_tables=tuple(models.describe(c) for _, c in stages),
        graphdefs=tuple(g for g, _ in splits),
        abstract_params=abstract,
        param_shardings=nnx.to_pure_dict(mesh_lib.param_shardings(abstract, mesh, rules)),
        step=step,
    )


def evaluate(plan: Plan, eval_step, params, eval_data, process_index: int = 0, process_count: int = 1) -> dict:
    """{eval_loss, eval_ppl, eval_bpb} of `params` over `eval_data`'s batches (bitjax.data.EvalData).

    eval_step: `plan.eval_step(stage)`, compiled once by the caller.
    """
    total, count = 0.0, 0.0
    for b in eval_data.batches(process_index, process_count):
        t, c = eval_step(params, plan.global_batch(b))
        total, count = total + float(t), count + float(c)
    loss = total / max(count, 1.0)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_bpb": eval_data.bits_per_byte(loss)}


# ============================================================================ the tokenizer, in the workdir
def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tokenizer_meta(tokenizer: tok_lib.Tokenizer) -> dict:
    """What a checkpoint records of its tokenizer: its name, and for a trained one the workdir copy of
    its model file and that file's sha256."""
    if isinstance(tokenizer, tok_lib.SentencePieceTokenizer):
        file = f"{TOKENIZER_DIR}/{tokenizer.name}.model"
        return {"name": tokenizer.name, "file": file, "sha256": _sha256(tokenizer.model_path)}
    if isinstance(tokenizer, tok_lib.HFTokenizer):  # a directory: tokenizer.json (+ tokenizer_config.json)
        file = f"{TOKENIZER_DIR}/{tokenizer.name}/tokenizer.json"
        return {"name": tokenizer.name, "file": file, "sha256": _sha256(tokenizer.model_path)}
    return {"name": tokenizer.name}


def store_tokenizer(workdir: str, tokenizer: tok_lib.Tokenizer) -> None:
    """Copies a trained tokenizer's model file into `workdir` (atomically, once), so that restoring
    the run needs no corpus. The byte tokenizer needs no file."""
    meta = tokenizer_meta(tokenizer)
    if "file" not in meta:
        return
    dst = os.path.join(workdir, meta["file"])
    if os.path.exists(dst) and _sha256(dst) == meta["sha256"]:
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if isinstance(tokenizer, tok_lib.HFTokenizer):  # its specials and chat template: before the json
        for extra in ("tokenizer_config.json", tok_lib.CHAT_TEMPLATE_FILE):
            src = os.path.join(os.path.dirname(tokenizer.model_path), extra)
            if os.path.exists(src):
                shutil.copyfile(src, os.path.join(os.path.dirname(dst), extra))
    tmp = f"{dst}.tmp-{os.getpid()}"
    shutil.copyfile(tokenizer.model_path, tmp)
    os.replace(tmp, dst)


def restore_tokenizer(workdir: str, meta: dict, config: ConfigDict, who: str) -> tok_lib.Tokenizer:
    """The tokenizer a checkpoint's `meta` names, from `workdir` alone (see :func:`tokenizer_meta`).

    A checkpoint written before tokenizers were stored with it has a byte tokenizer (nothing to read) or
    a sentencepiece one that only its corpus can rebuild: that corpus is opened, or a UserError says why not.
    """
    saved = meta.get("tokenizer")
    if saved is None:
        if config.data.tokenizer == "byte":
            return tok_lib.ByteTokenizer()
        from bitjax.data import pipeline  # tfds and grain: only for these older workdirs

        try:
            return pipeline.get_tokenizer(run_config.data_config(config))
        except ValueError as e:  # DataError: the corpus is gone or changed
            raise errors.UserError(
                f"{who} predates tokenizers stored in the workdir, and its sentencepiece tokenizer cannot be "
                f"rebuilt from its corpus ({e}); restore the corpus, or retrain with today's bitjax"
            ) from None
    if "file" not in saved:
        return tok_lib.ByteTokenizer()
    path = os.path.join(workdir, saved["file"])
    if not os.path.exists(path):
        raise errors.UserError(f"{who}: its tokenizer {path} is missing; copy the whole workdir, tokenizer/ included")
    if _sha256(path) != saved["sha256"]:
        raise errors.UserError(
            f"{who}: {path} is not the tokenizer this run was trained with (its sha256 differs from the checkpoint's)"
        )
    if path.endswith(".json"):
        return tok_lib.HFTokenizer(path)
    return tok_lib.SentencePieceTokenizer(path)


# ============================================================================ restore
def restore(
    workdir: str,
    step: int | None = None,
    *,
    devices=None,
    mesh: Mesh | dict | None = None,
    rules=None,
    field: str = "--workdir",
    check: Callable[[dict], None] | None = None,
    tokenizer: bool = True,
) -> tuple[Plan, Any]:
    """(plan, params) of the checkpoint at `step` (default: the latest) in `workdir`, from the workdir alone.

    Only parameters are read (no optimizer state); no corpus is opened and nothing compiles. The plan's
    config is the stored one completed with today's defaults, without its distillation teacher and
    init_from (a trained run needs neither). devices, mesh, rules: as :func:`resolve` (default the
    run's own config.mesh on all devices). field: how the user named `workdir` (errors name it).
    check(meta): called on the checkpoint's metadata before anything loads (raise UserError to refuse).
    tokenizer=False: plan.tokenizer is None (a teacher or init_from source needs none). A workdir
    without checkpoints or an absent step raises UserError, and nothing is created on disk. step=None
    reads past a damaged newest checkpoint to the one before, with a warning (nothing is renamed).
    """
    who = f"{field} {workdir!r}" if field.startswith("--") else f"{field}={workdir!r}"
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise errors.UserError(
            f"{who} holds no checkpoints/ ({ckpt_dir} does not exist): check the path, or train first "
            "(python -m bitjax.main --workdir ...) or import one (python -m bitjax.import_hf)"
        )
    ckpt = ckpt_lib.Checkpointer(ckpt_dir)  # the directory exists: orbax creates nothing
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise errors.UserError(f"{who} holds no finished checkpoint in {ckpt_dir}: train that run first")
        if step is not None and step not in steps:
            raise errors.UserError(f"--step {step}: {workdir} has checkpoints at steps {steps} only")
        damaged: set[int] = set()
        for _ in range(_LIVE_RETRIES):
            todo = [step] if step is not None else [s for s in steps[::-1] if s not in damaged]
            for i, s in enumerate(todo):
                try:
                    return _restore_step(ckpt, s, workdir, who, devices, mesh, rules, check, tokenizer)
                except errors.UserError:
                    raise
                except Exception as e:
                    if not os.path.isdir(os.path.join(ckpt_dir, str(s))):
                        # deleted while we read it: a live run's keep policy removed it after a newer save
                        if step is not None:
                            raise errors.UserError(
                                f"--step {step}: the run in {workdir} deleted that checkpoint while it was being "
                                f"read (it is still training and keeps only its newest ones): pass a step it "
                                f"still has (now {ckpt.all_steps(reload=True)}) or omit --step"
                            ) from None
                        log.warning(
                            "checkpoint step %d in %s was deleted while being read; reading the newest again",
                            s,
                            ckpt_dir,
                        )
                        break
                    if i == len(todo) - 1:
                        raise
                    damaged.add(s)  # a damaged newest checkpoint: read the one before
                    log.warning(
                        "checkpoint step %d in %s could not be read (%s: %s); trying the previous one",
                        s,
                        ckpt_dir,
                        type(e).__name__,
                        str(e)[:300],
                    )
            steps = ckpt.all_steps(reload=True)
            if not steps:
                raise errors.UserError(f"{who}: its checkpoints in {ckpt_dir} were all deleted while being read")
        raise errors.UserError(
            f"{who}: its newest checkpoint was deleted while being read {_LIVE_RETRIES} times (a live run saving "
            "every step with a small keep): pass --step of a checkpoint it keeps, or read it when it has finished"
        )
    finally:
        ckpt.close()


_LIVE_RETRIES = 5  # a run saving every step can delete the step being read; after that many, give up


def _restore_step(ckpt, step, workdir, who, devices, mesh, rules, check, tokenizer) -> tuple[Plan, Any]:
    meta = ckpt.restore_metadata(step)
    if check is not None:
        check(meta)
    config = run_config.with_defaults(meta["config"])
    config.distill.teacher_workdir = config.init_from = ""
    if isinstance(mesh, dict):
        config.mesh = ConfigDict(dict(mesh))
    tok = restore_tokenizer(workdir, meta, config, who) if tokenizer else None
    try:
        plan = resolve(config, tok, devices, mesh=mesh, rules=rules, step=step)
    except errors.UserError:
        raise
    except ValueError as e:
        raise errors.UserError(f"{who}: its stored config does not resolve here: {e}") from None
    return plan, ckpt.restore_params(step, plan.params_target())


def stored_config(workdir: str, field: str = "--workdir") -> tuple[ConfigDict, dict]:
    """(config completed with today's defaults, metadata) of `workdir`'s latest checkpoint; no parameters
    are read (a config file that derives a run from another, e.g. configs/convert_b158.py)."""
    who = f"{field} {workdir!r}" if field.startswith("--") else f"{field}={workdir!r}"
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise errors.UserError(f"{who} holds no checkpoints/ ({ckpt_dir} does not exist): check the path")
    with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
        try:
            meta = ckpt.restore_metadata()
        except FileNotFoundError:
            raise errors.UserError(f"{who} holds no finished checkpoint in {ckpt_dir}") from None
    return run_config.with_defaults(meta["config"]), meta


def restore_one_device(workdir: str, step: int | None = None) -> tuple[Plan, Any]:
    """:func:`restore` on the first device alone (sampling, export and PTQ's eager passes are small)."""
    return restore(workdir, step, devices=jax.devices()[:1], mesh=dict(data=1, fsdp=1, tensor=1))


class Run(NamedTuple):
    """Another run's model, frozen (a distillation teacher, config.init_from's source): see :func:`load_run`."""

    workdir: str
    step: int  # of the checkpoint restored
    config: ConfigDict  # its stored config, completed with today's defaults
    graphdef: Any  # its model as trained at `step` (the stage in force then)
    params: Any  # pure dict of jax.Arrays, sharded on the caller's mesh by its rules


def load_run(workdir: str, mesh: Mesh, rules, field: str, check=None) -> Run:
    """`workdir`'s latest checkpoint as a :class:`Run`, its parameters placed on `mesh` by `rules` (the
    caller's, as its own parameters). field, check: as :func:`restore`."""
    plan, params = restore(workdir, mesh=mesh, rules=rules, field=field, check=check, tokenizer=False)
    return Run(workdir, plan.step, plan.config, plan.graphdefs[plan.stage_at(plan.step)], params)
