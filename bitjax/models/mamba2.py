"""Mamba-2 language model in Flax NNX (Dao & Gu 2024, arXiv 2405.21060 §7), and Bi-Mamba's binarized variant.

    h = embeddings(tokens)                                                     [B, L, D], float32 residual
    per layer:  h = h + mixer(rms(h))
      mixer(u):  z | xBC | dt = in_proj(u)                     (d_inner | d_inner + 2·G·N | H)
                 x | B | C = silu(conv1d(xBC))                 causal depthwise conv, width d_conv, with bias
                 Δ = softplus(dt + dt_bias),  A = −exp(A_log)  per head
                 y = SSD(x, Δ, A, B, C) + D·x                  bitjax.nn.ssd (heads of P = headdim, G groups)
                 out_proj(gated_rms(y · silu(z)))              RMS over each of the G groups (norm_before_gate=False)
    logits = rms(h) · embeddingsᵀ  (tied; or lm_head)          float32 [B, L, V]

The block is state-spaces/mamba's ``Mamba2`` (mamba_ssm/modules/mamba2.py, d_mlp = 0) and HF transformers'
``Mamba2Mixer`` (its torch path); attribute names equal HF ``Mamba2ForCausalLM``'s under ``backbone.``
(:func:`hf_param_names`), and tests/test_hf_parity_mamba2.py checks the logits against it.

Quantization roles: ``in_proj out_proj`` (:class:`~bitjax.nn.BitDense`), plus ``embed lm_head``. conv1d,
A_log, D, dt_bias and the norms stay full precision, as in Bi-Mamba (Tang et al. 2024, arXiv 2411.11843 §3),
whose recipe (``bimamba``) binarizes exactly in_proj and out_proj with FBI's α ⊙ sign(W) + β. Methods written
for every projection (``*_proj``: b158, fbi, rtn4, …) apply to both; a method naming transformer-only roles
(a48's o_proj/down_proj) is refused by the recipe ("matches no layer of this model").

Decoding keeps, per layer, the last d_conv − 1 conv inputs and the SSM state [B, H, P, N]
(:meth:`Mamba2LM.init_cache` / :meth:`Mamba2LM.decode`): O(1) work per token (bitjax.nn.ssd.ssd_step).
"""

from __future__ import annotations

import math
import numbers

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict, FieldReference
from ml_collections.config_dict import placeholder

from bitjax import config as config_lib
from bitjax.models import common
from bitjax.models.common import DTYPES, Embed, is_pos_int, validate_quant
from bitjax.nn import layer_stack
from bitjax.nn.bitdense import BitDense
from bitjax.nn.norms import RMSNorm
from bitjax.nn.params import param
from bitjax.nn.ssd import ssd_chunked, ssd_step
from bitjax.quant.registry import QuantSpec

# The layer roles a quantization recipe can name (bitjax.quant.recipes).
ROLES = ("in_proj", "out_proj", "embed", "lm_head")
# logical axis → the config field that sets its size (for the trainer's mesh-divisibility errors)
SIZE_HINTS = {
    "embed": "config.model.d_model",
    "heads": "config.model.d_model × expand (= SSM heads × headdim; heads = d_model·expand/headdim)",
    "ssm_in": "config.model.d_model/expand/ngroups/d_state/headdim (in_proj's 2·d_inner + "
    "2·ngroups·d_state + heads outputs)",
    "ssm_conv": "config.model.d_model/expand/ngroups/d_state (conv channels d_inner + 2·ngroups·d_state)",
    "vocab": "config.model.vocab_size",
}
A_INIT_RANGE = (1.0, 16.0)  # mamba_ssm Mamba2(A_init_range=(1, 16)): A ~ U(1, 16), A_log = log A


def default_config() -> ConfigDict:
    """The model config (`config.model`); block defaults are state-spaces/mamba's ``Mamba2``.

    name: 'mamba2' (the key in bitjax.models).
    vocab_size: V; None → the tokenizer's size (filled in by the trainer).
    d_model, n_layers: D, blocks.
    d_state (N), d_conv (conv width), expand (d_inner = expand·D), headdim (P; heads H = d_inner / P),
      ngroups (G: B and C are shared by the H/G heads of a group), chunk_size (SSD chunk Q; any length works).
    conv_bias: conv1d has a bias.
    dt_min, dt_max, dt_init_floor: Δ at init is log-uniform in [dt_min, dt_max], floored at dt_init_floor;
      dt_bias = softplus⁻¹(Δ).
    norm_eps: eps of every RMSNorm (block norms, the gated norm, norm_f).
    tie_embeddings: logits = h · embeddingsᵀ (no lm_head), as state-spaces' MambaLMHeadModel.
    quant.*: as the transformer's (bitjax.models.transformer.default_config), over the roles in ROLES.
    dtype: compute dtype of the projections 'float32' | 'bfloat16' (parameters, residual and SSD stay float32).
    scan_layers, remat_policy, remat: how the blocks are built and rematerialised, as the transformer's
      (bitjax.nn.layer_stack: stacked under lax.scan, on for the 780m–2.7b presets; remat_policy none |
      full | save_quantized | save_dots; remat = the old bool, True = 'full').
    """
    return ConfigDict(
        dict(
            name="mamba2",
            vocab_size=FieldReference(259, field_type=int),
            d_model=128,
            n_layers=4,
            d_state=128,
            d_conv=4,
            expand=2,
            headdim=64,
            ngroups=1,
            chunk_size=256,
            conv_bias=True,
            dt_min=1e-3,
            dt_max=0.1,
            dt_init_floor=1e-4,
            norm_eps=1e-5,
            tie_embeddings=True,
            quant=common.quant_config(),
            dtype="float32",
            scan_layers=False,
            remat_policy="none",
            remat=placeholder(bool),
        )
    )


# Size presets: overrides of default_config().
SIZES = {
    # ~1M non-embedding params: 300 steps of B=16, L=128 in a couple of minutes on 2 CPU cores.
    "tiny": dict(d_model=128, n_layers=4, d_state=16, headdim=32, expand=2, ngroups=1, chunk_size=32),
    # state-spaces/mamba2-130m shapes (~130M with a 50k vocab).
    "small": dict(d_model=768, n_layers=24),
    # Bi-Mamba's sizes (Tang et al. 2024, Table 1) = state-spaces/mamba2-{780m, 1.3b, 2.7b} shapes.
    "780m": dict(d_model=1536, n_layers=48, scan_layers=True, remat_policy="full"),
    "1.3b": dict(d_model=2048, n_layers=48, scan_layers=True, remat_policy="full"),
    "2.7b": dict(d_model=2560, n_layers=64, scan_layers=True, remat_policy="full"),
}


def dims(cfg) -> dict[str, int]:
    """Derived widths: d_inner, heads, conv channels (x|B|C) and in_proj outputs (z|x|B|C|dt)."""
    d_inner = cfg.expand * cfg.d_model
    heads = d_inner // cfg.headdim
    conv = d_inner + 2 * cfg.ngroups * cfg.d_state
    return dict(d_inner=d_inner, heads=heads, conv=conv, in_proj=d_inner + conv + heads)


# ============================================================================ config validation
def quant_table(cfg) -> dict[str, QuantSpec]:
    """{role: QuantSpec} of config.model.quant's method (its final stage), as its layers get them."""
    return common.quant_table(cfg, ROLES)


def validate_config(cfg, *, name: str = "config.model") -> None:
    """Raise ValueError naming the bad field (e.g. `config.model.headdim=48`), its value and a fix."""

    def need(ok, field, fix):
        if not ok:
            value = cfg.get(field) if "." not in field else cfg.quant.get(field.split(".", 1)[1])
            raise ValueError(f"{name}.{field}={value!r} is invalid: {fix}")

    config_lib.check_fields(cfg, default_config(), name, "bitjax.models.mamba2.default_config()")
    need(cfg.name == "mamba2", "name", "must be 'mamba2' for this model")
    need(
        cfg.vocab_size is None or is_pos_int(cfg.vocab_size),
        "vocab_size",
        "must be a positive int (or None = the tokenizer's size)",
    )
    for f in ("d_model", "n_layers", "d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size"):
        need(is_pos_int(cfg[f]), f, "must be a positive int")
    d_inner = cfg.expand * cfg.d_model
    need(
        d_inner % cfg.headdim == 0,
        "headdim",
        f"must divide d_inner = expand·d_model = {d_inner} (heads = d_inner / headdim); e.g. 64 or 32",
    )
    heads = d_inner // cfg.headdim
    need(
        heads % cfg.ngroups == 0,
        "ngroups",
        f"must divide the number of heads {heads} (= expand·d_model / headdim); e.g. 1",
    )
    for f in ("dt_min", "dt_max", "dt_init_floor", "norm_eps"):
        need(
            isinstance(cfg[f], numbers.Real) and not isinstance(cfg[f], bool) and cfg[f] > 0,
            f,
            "must be a positive number",
        )
    need(cfg.dt_min <= cfg.dt_max, "dt_min", f"must be ≤ config.model.dt_max={cfg.dt_max}")
    for f in ("conv_bias", "tie_embeddings"):
        need(isinstance(cfg[f], bool), f, "must be True or False")
    layer_stack.validate_fields(cfg, need)
    need(cfg.dtype in DTYPES, "dtype", f"choose one of {tuple(DTYPES)}")
    validate_quant(
        cfg, name, quant_table, "bitjax.models.mamba2.default_config().quant", f" for mamba2 (roles {', '.join(ROLES)})"
    )


# ============================================================================ modules
def torch_linear_init(scale: float = 1.0):
    """torch nn.Linear's default weight init for a kernel (in, out): kaiming_uniform(a=√5), whose bound
    gain·√(3/fan_in) with gain = √(2/(1 + a²)) is 1/√fan_in; times `scale`: U(±scale/√in)."""

    def init(key, shape, dtype=jnp.float32):
        bound = scale / math.sqrt(shape[0])
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class CausalConv1d(nnx.Module):
    """Depthwise causal convolution over time: y_t = bias + Σ_{k<K} kernel_k ⊙ x_{t−K+1+k}  (Mamba-2 §7.1).

    kernel (K, C), logical axes (None, 'ssm_conv'); HF's Conv1d weight is (C, 1, K) = kernelᵀ[:, None].
    Init as torch's Conv1d default (fan_in = K for a depthwise conv): kernel, bias ~ U(±1/√K).
    """

    def __init__(self, channels: int, width: int, *, use_bias: bool, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(width)
        uniform = lambda shape: jax.random.uniform(rngs.params(), shape, jnp.float32, -bound, bound)
        self.kernel = param(uniform((width, channels)), (None, "ssm_conv"))
        self.bias = param(uniform((channels,)), ("ssm_conv",)) if use_bias else None

    def __call__(self, x: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        """x [B, T, C], state [B, K−1, C] (the previous inputs; None = zeros, i.e. the sequence start).

        Returns (y [B, T, C] in x's dtype, computed in float32; new state = the last K−1 inputs).
        """
        k = self.kernel.shape[0]
        t = x.shape[1]
        prev = jnp.zeros((x.shape[0], k - 1, x.shape[2]), jnp.float32) if state is None else state
        xx = jnp.concatenate([prev.astype(jnp.float32), x.astype(jnp.float32)], axis=1)  # [B, T+K−1, C]
        w = self.kernel[...]
        y = sum(xx[:, i : i + t] * w[i] for i in range(k))
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x.dtype), xx[:, t:]


class GatedRMSNorm(nnx.Module):
    """Mamba-2's extra norm before out_proj (§7.1), gated first (mamba_ssm RMSNormGated, norm_before_gate=False):

        u = y ⊙ silu(z);  out = u / sqrt(mean_group(u²) + eps) · scale,  mean over each of `groups` equal slices.

    scale (d,), logical axis 'heads'. float32 statistics.
    """

    def __init__(self, d: int, groups: int, *, eps: float):
        self.groups, self.eps = groups, eps
        self.scale = param(jnp.ones((d,), jnp.float32), ("heads",))

    def __call__(self, y: jax.Array, z: jax.Array) -> jax.Array:
        u = y.astype(jnp.float32) * jax.nn.silu(z.astype(jnp.float32))
        g = u.reshape(u.shape[:-1] + (self.groups, -1))
        g = g * jax.lax.rsqrt(jnp.mean(g * g, axis=-1, keepdims=True) + self.eps)
        return g.reshape(u.shape) * self.scale[...]


def _dt_bias_init(key, heads: int, cfg) -> jax.Array:
    """softplus⁻¹(Δ), Δ = exp(U(log dt_min, log dt_max)) floored at dt_init_floor (mamba_ssm Mamba2.__init__)."""
    lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
    dt = jnp.maximum(jnp.exp(jax.random.uniform(key, (heads,), jnp.float32, lo, hi)), cfg.dt_init_floor)
    return dt + jnp.log(-jnp.expm1(-dt))  # inverse softplus: log(exp(Δ) − 1)


class Mamba2Mixer(nnx.Module):
    """The Mamba-2 block's mixer (the module docstring's `mixer`): [B, T, D] → [B, T, D]."""

    def __init__(self, cfg, specs, dtype, *, rngs: nnx.Rngs):
        w = dims(cfg)
        self.d_inner, self.heads, self.conv_dim = w["d_inner"], w["heads"], w["conv"]
        self.headdim, self.ngroups, self.d_state, self.chunk_size = (
            cfg.headdim,
            cfg.ngroups,
            cfg.d_state,
            cfg.chunk_size,
        )
        # mamba_ssm's LM init (mixer_seq_simple._init_weights): its Linears keep torch's default,
        # kaiming_uniform(a=√5) = U(±1/√fan_in) (0.02 is for the embedding only), and with
        # rescale_prenorm_residual out_proj is divided by √(n_residuals_per_layer · n_layer), 1 residual a
        # block here (no MLP, d_intermediate = 0).
        self.in_proj = BitDense(
            cfg.d_model,
            w["in_proj"],
            quant=specs["in_proj"],
            norm_eps=cfg.norm_eps,
            axes=("embed", "ssm_in"),
            dtype=dtype,
            kernel_init=torch_linear_init(),
            rngs=rngs,
        )
        self.conv1d = CausalConv1d(self.conv_dim, cfg.d_conv, use_bias=cfg.conv_bias, rngs=rngs)
        self.dt_bias = param(_dt_bias_init(rngs.params(), self.heads, cfg), ("heads",))
        self.A_log = param(
            jnp.log(jax.random.uniform(rngs.params(), (self.heads,), jnp.float32, *A_INIT_RANGE)), ("heads",)
        )
        self.D = param(jnp.ones((self.heads,), jnp.float32), ("heads",))
        self.norm = GatedRMSNorm(self.d_inner, cfg.ngroups, eps=cfg.norm_eps)
        self.out_proj = BitDense(
            self.d_inner,
            cfg.d_model,
            quant=specs["out_proj"],
            norm_eps=cfg.norm_eps,
            axes=("heads", "embed"),
            dtype=dtype,
            kernel_init=torch_linear_init(1.0 / math.sqrt(cfg.n_layers)),
            rngs=rngs,
        )

    def __call__(self, u: jax.Array, cache: dict | None = None) -> tuple[jax.Array, dict | None]:
        """u [B, T, D] → (out [B, T, D], cache).

        cache None: the sequence starts here (training, scoring). Else cache = {'conv' [B, K−1, conv channels],
        'ssm' [B, H, P, N]} holds the state after the previous tokens; T = 1 takes the O(1) recurrent step.
        """
        b, t, _ = u.shape
        di, gn = self.d_inner, self.ngroups * self.d_state
        zxbcdt = self.in_proj(u)
        z, xbc, dt = jnp.split(zxbcdt, [di, di + self.conv_dim], axis=-1)
        xbc, conv_state = self.conv1d(xbc, None if cache is None else cache["conv"])
        xbc = jax.nn.silu(xbc)
        x, B, C = jnp.split(xbc, [di, di + gn], axis=-1)
        x = x.reshape(b, t, self.heads, self.headdim)
        B = B.reshape(b, t, self.ngroups, self.d_state)
        C = C.reshape(b, t, self.ngroups, self.d_state)
        dt = jax.nn.softplus(dt.astype(jnp.float32) + self.dt_bias[...])  # dt_limit (0, ∞): no clamp
        A = -jnp.exp(self.A_log[...])
        D = self.D[...]
        if cache is None:
            y, _ = ssd_chunked(x, dt, A, B, C, self.chunk_size, D=D)
        elif t == 1:
            y, ssm = ssd_step(cache["ssm"], x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
            y = y[:, None]
        else:
            y, ssm = ssd_chunked(x, dt, A, B, C, self.chunk_size, D=D, initial_state=cache["ssm"])
        if cache is not None:
            cache = {"conv": conv_state.astype(cache["conv"].dtype), "ssm": ssm}
        y = self.norm(y.reshape(b, t, di), z)
        return self.out_proj(y.astype(zxbcdt.dtype)), cache


class Mamba2Block(nnx.Module):
    """Pre-norm residual block: h += mixer(norm(h)), the residual kept in float32 (mamba_ssm residual_in_fp32)."""

    def __init__(self, cfg, specs, dtype, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg, specs, dtype, rngs=rngs)
        self.dtype = dtype

    def __call__(self, h, cache=None):
        out, cache = self.mixer(self.norm(h).astype(self.dtype), cache)
        return h + out.astype(jnp.float32), cache


class Mamba2LM(nnx.Module):
    """Mamba-2 LM: tokens int32[B, L] → logits float32[B, L, vocab]. See default_config()."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_config(cfg)
        if cfg.vocab_size is None:
            raise ValueError(
                "config.model.vocab_size=None is invalid here: set it (the trainer fills it from the tokenizer)"
            )
        specs = quant_table(cfg)
        self.dtype = dtype = DTYPES[cfg.dtype]
        self.n_layers, self.scan_layers, self.d_conv = cfg.n_layers, cfg.scan_layers, cfg.d_conv
        self.remat_policy = layer_stack.remat_policy(cfg)
        w = dims(cfg)
        self.conv_dim, self.heads, self.headdim, self.d_state = w["conv"], w["heads"], cfg.headdim, cfg.d_state
        quantized = lambda role: None if specs[role].is_fp else specs[role]
        self.embeddings = Embed(
            cfg.vocab_size,
            cfg.d_model,
            quant=quantized("embed"),
            head_quant=quantized("lm_head") if cfg.tie_embeddings else None,
            dtype=dtype,
            rngs=rngs,
        )
        self.layers = layer_stack.make_layers(
            lambda rngs: Mamba2Block(cfg, specs, dtype, rngs=rngs), cfg.n_layers, cfg.scan_layers, rngs
        )
        self.norm_f = RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = (
            None
            if cfg.tie_embeddings
            else BitDense(
                cfg.d_model,
                cfg.vocab_size,
                quant=specs["lm_head"],
                norm_eps=cfg.norm_eps,
                axes=("embed", "vocab"),
                dtype=dtype,
                rngs=rngs,
            )
        )

    def _forward(self, tokens, caches=None):
        h = self.embeddings(tokens).astype(jnp.float32)
        h, new_caches = layer_stack.apply_layers(
            self.layers, h, lambda block, h, cache: block(h, cache), self.remat_policy, caches
        )
        h = self.norm_f(h).astype(self.dtype)
        if self.lm_head is None:
            logits = self.embeddings.attend(h)
        else:
            logits = self.lm_head(h).astype(jnp.float32)
        return logits, new_caches

    def __call__(self, tokens: jax.Array) -> jax.Array:
        """int32[B, L] → float32 logits [B, L, vocab]; causal (each position sees only earlier tokens)."""
        return self._forward(tokens)[0]

    def init_cache(self, batch: int, max_len: int | None = None):
        """Zero state per layer: {'conv': [batch, d_conv − 1, conv channels], 'ssm': [batch, H, P, N]}, float32,
        a list, or with scan_layers one dict of those shapes with a leading n_layers axis.

        `max_len` is accepted for the sampler's interface: the state does not grow with the sequence.
        """
        del max_len
        conv = (batch, self.d_conv - 1, self.conv_dim)
        ssm = (batch, self.heads, self.headdim, self.d_state)
        zeros = lambda *lead: {
            "conv": jnp.zeros((*lead, *conv), jnp.float32),
            "ssm": jnp.zeros((*lead, *ssm), jnp.float32),
        }
        return zeros(self.n_layers) if self.scan_layers else [zeros() for _ in range(self.n_layers)]

    def decode(self, tokens: jax.Array, cache, index=None) -> tuple[jax.Array, list]:
        """Run tokens int32[B, T] that follow the tokens `cache` has seen → (float32 logits [B, T, vocab], cache).

        `index` (the position of tokens[:, 0]) is accepted for the sampler's interface; the state needs none.
        Equal to __call__ on the whole prefix.
        """
        del index
        return self._forward(tokens, cache)


# ============================================================================ HF names
def hf_param_names(model: Mamba2LM) -> dict[str, str]:
    """Our param path → HF transformers ``Mamba2ForCausalLM`` state-dict name, one entry per param.

    'layers.0.mixer.in_proj.kernel' → 'backbone.layers.0.mixer.in_proj.weight' (weight = kernelᵀ),
    'layers.0.mixer.conv1d.kernel' → '….conv1d.weight' ((C, 1, K) = kernelᵀ[:, None]), norm 'scale' →
    'weight', 'embeddings.embedding' → 'backbone.embeddings.weight', 'norm_f.scale' → 'backbone.norm_f.weight',
    'lm_head.kernel' → 'lm_head.weight'; A_log, D, dt_bias, conv1d.bias keep their names. Learned quantizer
    params drop 'qparams' ('…in_proj.qparams.alpha' → '…in_proj.alpha'; no HF twin). Paths are the loop
    layout's (layer_stack.unstack_layers), whatever `model.scan_layers` is.
    """
    model = layer_stack.unstack_layers(model)
    out = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        parts = [str(p) for p in path if p != "qparams"]
        if parts[-1] in ("kernel", "embedding", "scale"):
            parts[-1] = "weight"
        name = ".".join(parts)
        out[".".join(map(str, path))] = name if parts[0] == "lm_head" else "backbone." + name
    return out
