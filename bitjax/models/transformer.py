"""Decoder-only BitNet-family language model in Flax NNX (Llama / BitNet b1.58 2B4T layout).

    h = embed(tokens)                                              [B, L, D]
    per layer:  h = h + o_proj(sub_norm_a(attn(rope(q), rope(k), v)))      q,k,v = *_proj(rms(h))
                h = h + down_proj(sub_norm_f(act(gate_proj(u)) · up_proj(u)))   u = rms(h)
    logits = lm_head(rms(h))  (or  rms(h) · embedᵀ  when tied)     float32 [B, L, V]

Every projection is a :class:`~bitjax.nn.BitDense` whose spec is the quantization
recipe's (bitjax.quant.recipes) for its role: ``q_proj k_proj v_proj o_proj gate_proj
up_proj down_proj``, plus ``embed`` and ``lm_head`` (full precision unless a rule names
them). With ``sub_norm`` (BitNet's attn_sub_norm / ffn_sub_norm) an RMSNorm normalises
the intermediate states (o_proj / down_proj inputs) before they are quantized. Attribute names equal HF
transformers' Llama/BitNet module names; :func:`hf_param_names` gives the map.

RoPE is HF Llama's rotate_half convention, in float32 from integer positions.
Attention is causal GQA via ``jax.nn.dot_product_attention``: it never tiles K/V,
and for the tiny preset's jitted AdamW step on 2 CPU cores it matched or beat an
explicit einsum + causal mask (fp 5.2 vs 5.2 steps/s, b158 5.2 vs 4.7).
A functional KV cache (:meth:`Transformer.init_cache` / :meth:`Transformer.decode`)
serves bitjax.eval.sample.

With ``scan_layers`` the decoder layers are one module whose parameters carry a leading layer axis
(logical name 'layers', e.g. q_proj.kernel (n_layers, D, H·hd) with axes ('layers', 'embed', 'heads')),
run by ``jax.lax.scan``; ``remat_policy`` picks what the backward keeps (bitjax.nn.layer_stack).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict, FieldReference
from ml_collections.config_dict import placeholder

from bitjax import config as config_lib
from bitjax.models import common
from bitjax.models.common import DTYPES, Embed, is_pos_int, stage_configs, validate_quant
from bitjax.nn import layer_stack, sharding
from bitjax.nn.bitdense import BitDense
from bitjax.nn.norms import RMSNorm
from bitjax.quant.int8_matmul import integer_forms
from bitjax.quant.registry import QuantSpec

ACTIVATIONS = {
    "silu": jax.nn.silu,  # SwiGLU (Llama): silu(gate) · up
    "relu2": lambda x: jnp.square(jax.nn.relu(x)),  # BitNet b1.58 2B4T: relu(gate)² · up
}
# The decoder layer's projections (attribute names = HF Llama/BitNet module names), and the layer roles a
# quantization recipe can name (bitjax.quant.recipes): those plus the embedding and the output head.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ROLES = (*PROJECTIONS, "embed", "lm_head")
# Modules a run converted from an fp model may add (config.model.sub_norm=True on a Llama without them):
# config.init_from initialises their parameters fresh (RMSNorm scale = 1), as BitDistill's SubLN insertion
# (arXiv 2510.13998, stage 1 "modeling refinement") starts from the pretrained weights plus new sub-norms.
INSERTABLE = ("attn_sub_norm", "ffn_sub_norm")
RESIDUAL = ("batch", "length", "embed")  # logical axes of the residual stream h [B, L, D]
# config.model.attention → jax.nn.dot_product_attention(implementation=…)
ATTENTION = {"auto": None, "xla": "xla", "cudnn": "cudnn"}


# logical axis → the config field that sets its size (for the trainer's mesh-divisibility errors)
SIZE_HINTS = {
    "embed": "config.model.d_model",
    "heads": "config.model.n_heads (× head_dim)",
    "kv_heads": "config.model.n_kv_heads (× head_dim)",
    "mlp": "config.model.mlp_dim",
    "vocab": "config.model.vocab_size",
}


def default_config() -> ConfigDict:
    """The model config (`config.model`); defaults = a tiny full-precision Llama.

    name: 'transformer' (the key in bitjax.models).
    vocab_size: V; None → the tokenizer's size (filled in by the trainer). 259 = byte tokenizer.
    d_model, n_layers, n_heads: D, layers, query heads.
    n_kv_heads: key/value heads (GQA); must divide n_heads (= n_heads → MHA).
    head_dim: per-head width; None → d_model // n_heads. Must be even (RoPE rotates pairs).
    mlp_dim: FFN hidden width F.
    activation: 'silu' (SwiGLU, Llama) | 'relu2' (squared-ReLU GLU, BitNet b1.58 2B4T).
    rope_theta: RoPE base (10000; 500000 for Llama 3 / BitNet 2B4T).
    norm_eps: eps of every RMSNorm (and of BitDense's in-layer norm).
    sub_norm: BitNet attn_sub_norm (RMSNorm over n_heads·head_dim before o_proj) and
      ffn_sub_norm (RMSNorm over mlp_dim before down_proj).
    tie_embeddings: logits = h · embeddingᵀ (no lm_head).
    quant.method: a bitjax.quant.METHODS name ('fp', 'bitnet', 'b158', 'a48', 'fbi', …).
    quant.grad: gradient rule ('identity' | 'clipped' | 'approx_sign').
    quant.rules: extra recipe rules applied after the method's, 'PATTERN: key=value, …; …' over
      the roles in ROLES (e.g. 'o_proj: act.keep=0.25; embed|lm_head: weight=ternary_absmean').
    quant.stage1: method trained first ('' = the method's own: a48 → b158; 'none' = no first stage).
    quant.stage2_frac: fraction of total_steps where the method itself takes over (None = the method's).
    quant.warmup_steps: 0, or N: the quantizers fade in over the first N steps, W + λ(Q(W) − W) and
      x + λ(Q(x) − x) with λ = min(1, step / N) (bitjax.quant.warmup; HF's 1.58-bit fine-tuning).
    dtype: compute dtype 'float32' | 'bfloat16' (parameters stay float32).
    scan_layers, remat_policy, remat: how the layers are built and rematerialised
      (bitjax.nn.layer_stack: stacked under lax.scan, on for the ≥ 1b presets; remat_policy none | full |
      save_quantized | save_dots; remat = the old bool, True = 'full').
    attention: 'auto' | 'xla' | 'cudnn': jax.nn.dot_product_attention's implementation ('auto' = JAX's choice:
      XLA on CPU and TPU; 'cudnn' = the fused cuDNN flash kernel, GPU only, bf16/fp16).
    int8_matmul: every quantized projection's forward matmul runs on its integer codes (int8 × int8 →
      int32, one rescale; bitjax.quant.int8_matmul), the STE backward unchanged. b158 and a48 only.
    """
    # Fields that may be None are typed, so `--config.model.head_dim=64` etc. work on the CLI.
    return ConfigDict(
        dict(
            name="transformer",
            vocab_size=FieldReference(259, field_type=int),
            d_model=128,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            head_dim=placeholder(int),
            mlp_dim=384,
            activation="silu",
            rope_theta=10000.0,
            norm_eps=1e-5,
            sub_norm=False,
            tie_embeddings=False,
            quant=common.quant_config(),
            dtype="float32",
            scan_layers=False,
            remat_policy="none",
            remat=placeholder(bool),
            int8_matmul=False,
            attention="auto",
        )
    )


_2B4T = dict(
    d_model=2560,
    n_layers=30,
    n_heads=20,
    n_kv_heads=5,
    head_dim=None,
    mlp_dim=6912,
    activation="relu2",
    sub_norm=True,
    rope_theta=500000.0,
    vocab_size=128256,
    tie_embeddings=True,
    scan_layers=True,
    remat_policy="full",
)
# Size presets: overrides of default_config().
SIZES = {
    # nano / tiny / mini: CPU sizes for the scale study (experiments/scale_cpu), ~0.1M / 0.8M / 4.7M
    # non-embedding params; nano is a cheap smoke-test size, mini takes ~6× tiny's step time.
    "nano": dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=None, mlp_dim=192),
    # ~0.8M non-embedding params: a few hundred steps of B=16, L=128 in well under 2 min on 2 CPU cores.
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=None, mlp_dim=384),
    "mini": dict(d_model=256, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=None, mlp_dim=768),
    # GPT-2-small / Llama-style ~125M (85M non-embedding + a 32k vocab).
    "small": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, head_dim=None, mlp_dim=2048),
    # Llama 3.2 1B shapes.
    "1b": dict(
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=None,
        mlp_dim=8192,
        rope_theta=500000.0,
        tie_embeddings=True,
        scan_layers=True,
        remat_policy="full",
    ),
    # BitNet b1.58 2B4T shapes (2.4B params with its 128k vocab).
    "3b": _2B4T,
    "2b4t": _2B4T,
    # Llama 2 7B shapes.
    "7b": dict(
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        head_dim=None,
        mlp_dim=11008,
        scan_layers=True,
        remat_policy="full",
    ),
}


# ============================================================================ config validation
def quant_table(cfg) -> dict[str, QuantSpec]:
    """{role: QuantSpec} of config.model.quant's method (its final stage), as its layers get them."""
    return common.quant_table(cfg, ROLES)


def validate_config(cfg, *, name: str = "config.model") -> None:
    """Raise ValueError naming the bad field (e.g. `config.model.n_kv_heads=3`), its value and a fix."""

    def need(ok, field, fix):
        if not ok:
            value = cfg.get(field) if "." not in field else cfg.quant.get(field.split(".", 1)[1])
            raise ValueError(f"{name}.{field}={value!r} is invalid: {fix}")

    config_lib.check_fields(cfg, default_config(), name, "bitjax.models.transformer.default_config()")
    need(cfg.name == "transformer", "name", "must be 'transformer' for this model")
    need(
        cfg.vocab_size is None or is_pos_int(cfg.vocab_size),
        "vocab_size",
        "must be a positive int (or None = the tokenizer's size)",
    )
    for f in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim"):
        need(is_pos_int(cfg[f]), f, "must be a positive int")
    need(
        cfg.n_heads % cfg.n_kv_heads == 0,
        "n_kv_heads",
        f"must divide config.model.n_heads={cfg.n_heads} (GQA groups); e.g. 1 or {cfg.n_heads}",
    )
    if cfg.head_dim is None:
        need(
            cfg.d_model % cfg.n_heads == 0,
            "d_model",
            f"must be divisible by config.model.n_heads={cfg.n_heads} when head_dim is None; "
            f"change d_model/n_heads or set config.model.head_dim",
        )
        head_dim = cfg.d_model // cfg.n_heads
        need(
            head_dim % 2 == 0,
            "d_model",
            f"d_model // n_heads = {head_dim} must be even (RoPE rotates pairs); change d_model or n_heads",
        )
    else:
        need(
            is_pos_int(cfg.head_dim) and cfg.head_dim % 2 == 0,
            "head_dim",
            "must be a positive even int (RoPE rotates pairs) or None (= d_model // n_heads)",
        )
    need(cfg.activation in ACTIVATIONS, "activation", f"choose one of {tuple(ACTIVATIONS)}")
    for f in ("rope_theta", "norm_eps"):
        need(
            isinstance(cfg[f], numbers.Real) and not isinstance(cfg[f], bool) and cfg[f] > 0,
            f,
            "must be a positive number",
        )
    for f in ("sub_norm", "tie_embeddings", "int8_matmul"):
        need(isinstance(cfg[f], bool), f, "must be True or False")
    need(cfg.attention in ATTENTION, "attention", f"choose one of {tuple(ATTENTION)}")
    layer_stack.validate_fields(cfg, need)
    need(cfg.dtype in DTYPES, "dtype", f"choose one of {tuple(DTYPES)}")
    validate_quant(cfg, name, quant_table, "bitjax.models.transformer.default_config().quant")
    if cfg.int8_matmul:  # every quantized BitDense of every stage must be integer-coded
        dense_roles = [r for r in ROLES if r != "embed" and not (r == "lm_head" and cfg.tie_embeddings)]
        for _, c in stage_configs(cfg):
            table = quant_table(c)
            try:
                quantized = [r for r in dense_roles if not table[r].is_fp]
                if not quantized:
                    raise ValueError("no projection is quantized")
                for role in quantized:
                    try:
                        integer_forms(table[role])
                    except ValueError as e:
                        raise ValueError(f"{role}: {e}") from None
            except ValueError as e:
                raise ValueError(
                    f"{name}.int8_matmul=True is invalid for quant.method={c.quant.method!r}: {e}; "
                    f"use int8_matmul=False, or method 'b158' / 'a48'"
                ) from None


# ============================================================================ RoPE
def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """HF Llama rotary tables: positions int[..., L] → (cos, sin) float32 [..., L, head_dim].

    inv_freq = 1 / θ^(arange(0, hd, 2) / hd);  emb = concat(p·inv_freq, p·inv_freq).
    """
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x·cos + rotate_half(x)·sin, rotate_half(x) = concat(−x₂, x₁) over halves of head_dim.

    x [B, L, H, hd]; cos/sin [L, hd]. Computed in float32, returned in x's dtype.
    """
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


# ============================================================================ modules
def _dense(cfg, din, dout, specs, role, axes, dtype, rngs):
    return BitDense(
        din,
        dout,
        quant=specs[role],
        norm_eps=cfg.norm_eps,
        axes=axes,
        dtype=dtype,
        int8_matmul=cfg.int8_matmul and not specs[role].is_fp,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Causal GQA self-attention with RoPE; BitNet attn_sub_norm before o_proj when sub_norm."""

    def __init__(self, cfg, specs, dtype, *, rngs: nnx.Rngs):
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = hd = cfg.head_dim or cfg.d_model // cfg.n_heads
        d, qd, kvd = cfg.d_model, cfg.n_heads * hd, cfg.n_kv_heads * hd
        self.q_proj = _dense(cfg, d, qd, specs, "q_proj", ("embed", "heads"), dtype, rngs)
        self.k_proj = _dense(cfg, d, kvd, specs, "k_proj", ("embed", "kv_heads"), dtype, rngs)
        self.v_proj = _dense(cfg, d, kvd, specs, "v_proj", ("embed", "kv_heads"), dtype, rngs)
        self.o_proj = _dense(cfg, qd, d, specs, "o_proj", ("heads", "embed"), dtype, rngs)
        self.attn_sub_norm = RMSNorm(qd, eps=cfg.norm_eps, axis="heads") if cfg.sub_norm else None
        self.implementation = ATTENTION[cfg.get("attention", "auto")]

    def __call__(self, x, cos, sin, cache=None, index=None):
        """x [B, T, D] → ([B, T, D], cache).

        cache None: plain causal attention over the T positions. Else cache = {'k', 'v'}
        [B, S, K, hd]: this chunk's k/v are written at [index, index+T) and each query t
        attends to cache positions ≤ index + t (prefill and one-token decode alike).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.n_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.n_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        scale = self.head_dim**-0.5
        if cache is None:
            o = jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True, implementation=self.implementation)
        else:
            k = jax.lax.dynamic_update_slice_in_dim(cache["k"], k.astype(cache["k"].dtype), index, axis=1)
            v = jax.lax.dynamic_update_slice_in_dim(cache["v"], v.astype(cache["v"].dtype), index, axis=1)
            cache = {"k": k, "v": v}
            mask = jnp.arange(k.shape[1])[None, :] <= (index + jnp.arange(t))[:, None]  # [T, S]
            o = jax.nn.dot_product_attention(
                q,
                k.astype(q.dtype),
                v.astype(q.dtype),
                scale=scale,
                mask=mask[None, None],
                implementation=self.implementation,
            )
        o = o.reshape(b, t, self.n_heads * self.head_dim)
        if self.attn_sub_norm is not None:
            o = self.attn_sub_norm(o)
        return self.o_proj(o), cache


class MLP(nnx.Module):
    """down_proj(ffn_sub_norm(act(gate_proj(x)) · up_proj(x))); act 'silu' (SwiGLU) or 'relu2'."""

    def __init__(self, cfg, specs, dtype, *, rngs: nnx.Rngs):
        self.activation = cfg.activation
        d, f = cfg.d_model, cfg.mlp_dim
        self.gate_proj = _dense(cfg, d, f, specs, "gate_proj", ("embed", "mlp"), dtype, rngs)
        self.up_proj = _dense(cfg, d, f, specs, "up_proj", ("embed", "mlp"), dtype, rngs)
        self.down_proj = _dense(cfg, f, d, specs, "down_proj", ("mlp", "embed"), dtype, rngs)
        self.ffn_sub_norm = RMSNorm(f, eps=cfg.norm_eps, axis="mlp") if cfg.sub_norm else None

    def __call__(self, x):
        h = ACTIVATIONS[self.activation](self.gate_proj(x)) * self.up_proj(x)
        if self.ffn_sub_norm is not None:
            h = self.ffn_sub_norm(h)
        return self.down_proj(h)


class DecoderLayer(nnx.Module):
    """Pre-norm block: h += attn(input_layernorm(h)); h += mlp(post_attention_layernorm(h))."""

    def __init__(self, cfg, specs, dtype, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.self_attn = Attention(cfg, specs, dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = MLP(cfg, specs, dtype, rngs=rngs)

    def __call__(self, x, cos, sin, cache=None, index=None):
        a, cache = self.self_attn(self.input_layernorm(x), cos, sin, cache, index)
        x = x + a
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Transformer(nnx.Module):
    """Decoder-only LM: tokens int32[B, L] → logits float32[B, L, vocab]. See default_config()."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_config(cfg)
        if cfg.vocab_size is None:
            raise ValueError(
                "config.model.vocab_size=None is invalid here: set it (the trainer fills it from the tokenizer)"
            )
        specs = quant_table(cfg)
        self.dtype = dtype = DTYPES[cfg.dtype]
        self.head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        self.n_kv_heads, self.rope_theta = cfg.n_kv_heads, float(cfg.rope_theta)
        self.n_layers, self.scan_layers = cfg.n_layers, cfg.scan_layers
        self.remat_policy = layer_stack.remat_policy(cfg)
        quantized = lambda role: None if specs[role].is_fp else specs[role]
        self.embed_tokens = Embed(
            cfg.vocab_size,
            cfg.d_model,
            quant=quantized("embed"),
            head_quant=quantized("lm_head") if cfg.tie_embeddings else None,
            dtype=dtype,
            rngs=rngs,
        )
        self.layers = layer_stack.make_layers(
            lambda rngs: DecoderLayer(cfg, specs, dtype, rngs=rngs), cfg.n_layers, cfg.scan_layers, rngs
        )
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else _dense(cfg, cfg.d_model, cfg.vocab_size, specs, "lm_head", ("embed", "vocab"), dtype, rngs)
        )

    def _trunk(self, tokens, positions, caches=None, index=None):
        # The residual stream and the logits keep the batch sharded (bitjax.nn.sharding; a no-op outside a
        # step traced under sharding.logical_rules): left to propagation, the fsdp-sharded weights pull
        # activations onto 'embed' and replicate the batch (issue 26).
        x = sharding.constrain(self.embed_tokens(tokens), RESIDUAL)
        cos, sin = rope_cos_sin(positions, self.head_dim, self.rope_theta)

        def call(layer, x, cache):
            y, cache = layer(x, cos, sin, cache, index)
            return sharding.constrain(y, RESIDUAL), cache

        x, new_caches = layer_stack.apply_layers(self.layers, x, call, self.remat_policy, caches)
        return self.norm(x), new_caches

    def _forward(self, tokens, positions, caches=None, index=None):
        x, new_caches = self._trunk(tokens, positions, caches, index)
        if self.lm_head is None:
            logits = self.embed_tokens.attend(x)
        else:  # BitDense returns the compute dtype (bf16 logits are rounded before this cast)
            logits = self.lm_head(x).astype(jnp.float32)
        return sharding.constrain(logits, ("batch", "length", "vocab")), new_caches

    def hidden(self, tokens: jax.Array) -> jax.Array:
        """int32[B, L] → the final-normed hidden states [B, L, D] that the head reads (positions 0..L−1)."""
        return self._trunk(tokens, jnp.arange(tokens.shape[1]))[0]

    def head_operands(self, x: jax.Array):
        """(a [B, L, D], w [D, V], rounding dtype or None) with logits = float32(a · w) (rounded to that
        dtype first, as BitDense rounds its output), so a loss can take the head's matmul in vocabulary
        chunks (bitjax.run.plan.chunked_cross_entropy). The head's quantizers run once, on the whole
        input and the whole weight, as in __call__."""
        if self.lm_head is None:
            e = self.embed_tokens
            a = e.quantized_head_input(x)
            return a, e.table(e.head_quant).astype(a.dtype).T, None
        h = self.lm_head
        if h.int8_matmul or h.output_norm is not None or h.bias is not None:
            raise ValueError(
                "config.loss_vocab_chunk needs an lm_head that is one matmul (no int8_matmul, out_norm or bias "
                "on it); set config.loss_vocab_chunk=0"
            )
        dtype = h.dtype or x.dtype
        a = (x if h.norm is None else h.norm(x)).astype(dtype)
        return h.quantized_input(a), h.quantized_kernel().astype(dtype), dtype

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int32[B, L] → float32 logits [B, L, vocab]; positions 0..L−1, causal."""
        return self._forward(tokens, jnp.arange(tokens.shape[1]))[0]

    def init_cache(self, batch: int, max_len: int):
        """Zero KV cache {'k', 'v'}: [batch, max_len, n_kv_heads, head_dim] in the compute dtype, one per
        layer (a list) or, with scan_layers, one dict of [n_layers, batch, max_len, n_kv_heads, head_dim]."""
        shape = (batch, max_len, self.n_kv_heads, self.head_dim)
        zeros = lambda *lead: {"k": jnp.zeros((*lead, *shape), self.dtype), "v": jnp.zeros((*lead, *shape), self.dtype)}
        return zeros(self.n_layers) if self.scan_layers else [zeros() for _ in range(self.n_layers)]

    def decode(self, tokens: jax.Array, cache, index) -> tuple[jax.Array, list]:
        """Run tokens int32[B, T] at positions index..index+T−1 against `cache`.

        Returns (float32 logits [B, T, vocab], updated cache). Equal to __call__ on the
        whole prefix (per-token quantizers make each position independent of later ones).
        """
        index = jnp.asarray(index, jnp.int32)
        return self._forward(tokens, index + jnp.arange(tokens.shape[1]), cache, index)


# ============================================================================ HF names
def _path_str(path) -> str:
    return ".".join(str(p) for p in path)


def hf_param_names(model: Transformer) -> dict[str, str]:
    """Our param path → HF transformers (Llama / BitNet) state-dict name, one entry per param.

    Paths are the loop layout's (layer_stack.unstack_layers), whatever `model.scan_layers` is:
    'layers.0.self_attn.q_proj.kernel' → 'model.layers.0.self_attn.q_proj.weight' (HF weight
    = kernelᵀ), norm 'scale' → 'weight', 'embed_tokens.embedding' → 'model.embed_tokens.weight',
    'lm_head.kernel' → 'lm_head.weight'. Learned quantizer params drop 'qparams'
    ('…q_proj.qparams.alpha' → '…q_proj.alpha'). A BitDense's in-layer norm is named as HF
    AutoBitLinear's 'rms_norm' (RMSNorm) or 'layer_norm' (BitNet v1 LayerNorm; no HF twin).
    """
    model = layer_stack.unstack_layers(model)
    out = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        parts = [str(p) for p in path]
        hf = []
        for i, p in enumerate(parts):
            if p == "qparams":
                continue
            if p in ("kernel", "embedding", "scale") and i == len(parts) - 1:
                p = "weight"
            elif p == "norm" and i > 0:  # a BitDense's in-layer norm (the final norm is at i == 0)
                owner = model
                for q in path[: i + 1]:
                    owner = owner[q] if isinstance(q, int) else getattr(owner, q)
                p = "rms_norm" if isinstance(owner, RMSNorm) else "layer_norm"
            hf.append(p)
        name = ".".join(hf)
        out[_path_str(path)] = name if parts[0] == "lm_head" else "model." + name
    return out
