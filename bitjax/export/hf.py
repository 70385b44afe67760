"""bitjax transformer ↔ HF transformers (Llama / BitNet), and mamba2 → Mamba2ForCausalLM: names, layout, config.

    arch, hf_cfg = hf_config(config.model)      # 'LlamaForCausalLM' | 'BitNetForCausalLM', config kwargs
    state = hf_state_dict(model)                # {HF name: numpy array}, latent (unquantized) weights

`hf_state_dict` maps every parameter through its family's HF names (`bitjax.models.hf_param_names`; the
transformer's, the one family with an HF layout today, are Llama/BitNet's) and transposes
kernels to torch's (out, in). Loaded into HF's BitNetForCausalLM with AutoBitLinear in online mode (or
LlamaForCausalLM for `fp`), it reproduces bitjax's logits (tests/test_hf_parity.py). Packed 1/1.6/2-bit
export builds on this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax import models
from bitjax.models import mamba2
from bitjax.models.transformer import PROJECTIONS, default_config
from bitjax.nn.layer_stack import unstack_layers
from bitjax.quant.registry import QuantSpec


def hf_state_dict(model) -> dict[str, np.ndarray]:
    """{HF state-dict name: float32 array} of a Transformer's or Mamba2LM's parameters (kernels transposed).

    A scan_layers model's stacked parameters come out per layer, as the loop layout's; a Mamba-2 conv1d
    kernel (K, C) becomes torch Conv1d's depthwise weight (C, 1, K).
    """
    model = unstack_layers(model)
    names = models.hf_param_names(model)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = np.asarray(var.get_value())
        if path[-1] == "kernel":
            value = value.T  # (in, out) → (out, in)
            if path[-2] == "conv1d":
                value = value[:, None, :]
        out[names[".".join(map(str, path))]] = np.ascontiguousarray(value)
    return out


def _mamba2_kwargs(cfg) -> dict:
    w = mamba2.dims(cfg)
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        state_size=cfg.d_state,
        conv_kernel=cfg.d_conv,
        expand=cfg.expand,
        head_dim=cfg.headdim,
        num_heads=w["heads"],
        n_groups=cfg.ngroups,
        chunk_size=cfg.chunk_size,
        use_bias=False,
        use_conv_bias=cfg.conv_bias,
        layer_norm_epsilon=cfg.norm_eps,
        residual_in_fp32=True,
        time_step_min=cfg.dt_min,
        time_step_max=cfg.dt_max,
        time_step_floor=cfg.dt_init_floor,
        time_step_limit=(0.0, float("inf")),
        tie_word_embeddings=cfg.tie_embeddings,
    )


def _llama_kwargs(cfg) -> dict:
    head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
    if cfg.sub_norm and head_dim * cfg.n_heads != cfg.d_model:
        raise ValueError("HF BitNet's attn_sub_norm has hidden_size features: it needs n_heads · head_dim == d_model")
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=head_dim,
        hidden_act=cfg.activation,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        attention_bias=False,
    )


@dataclasses.dataclass(frozen=True)
class Architecture:
    """An HF transformers architecture a bitjax family exports to (and imports from, with `from_hf`).

    holds(cfg): whether config.model of `family` is this architecture; to_hf(cfg): its HF config kwargs;
    bitnet: HF's BitNet quantizer (BitNetQuantConfig, b1.58) applies to it; from_hf(hf_cfg, arch) →
    config.model, or None where bitjax does not import the architecture.
    """

    family: str
    model_type: str
    holds: Callable[[Any], bool]
    to_hf: Callable[[Any], dict]
    bitnet: bool
    from_hf: Callable[[dict, str], Any] | None = None


# What transformers' config classes (LlamaConfig, BitNetConfig) default to for the fields a config.json
# may leave out: a missing field means the architecture's default, not bitjax's. tests/test_export_hf.py
# checks this table against the installed transformers.
HF_DEFAULTS = {
    "LlamaForCausalLM": dict(hidden_act="silu", tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=10000.0),
    "BitNetForCausalLM": dict(hidden_act="relu2", tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=500000.0),
}


def _transformer_from_hf(hf_cfg: dict, arch: str):
    """config.model of an HF BitNetForCausalLM / LlamaForCausalLM config.json dict (see model_config_from_hf)."""
    hf_cfg = {**HF_DEFAULTS[arch], **{k: v for k, v in hf_cfg.items() if v is not None}}
    q = quantization(hf_cfg)
    if q and (q.get("quant_method") != "bitnet" or q.get("use_rms_norm")):
        raise ValueError(f"quantization_config {q} is not imported: only HF BitNet without use_rms_norm (b1.58)")
    rope = hf_cfg.get("rope_parameters") or hf_cfg.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope_type {rope.get('rope_type')!r} is not implemented in bitjax (default RoPE only)")
    if hf_cfg.get("attention_bias") or hf_cfg.get("mlp_bias"):
        raise ValueError("attention_bias / mlp_bias are not implemented in bitjax")
    act = {"relu2": "relu2", "silu": "silu"}.get(hf_cfg["hidden_act"])
    if act is None:
        raise ValueError(f"hidden_act {hf_cfg['hidden_act']!r} is not implemented (silu, relu2)")
    d, h = hf_cfg["hidden_size"], hf_cfg["num_attention_heads"]
    head_dim = hf_cfg.get("head_dim") or d // h
    theta = rope.get("rope_theta", hf_cfg["rope_theta"])
    cfg = default_config()
    cfg.update(
        dict(
            vocab_size=hf_cfg["vocab_size"],
            d_model=d,
            n_layers=hf_cfg["num_hidden_layers"],
            n_heads=h,
            n_kv_heads=hf_cfg.get("num_key_value_heads") or h,
            head_dim=None if head_dim * h == d else head_dim,
            mlp_dim=hf_cfg["intermediate_size"],
            activation=act,
            rope_theta=float(theta),
            norm_eps=float(hf_cfg["rms_norm_eps"]),
            sub_norm=arch.startswith("BitNet"),
            tie_embeddings=bool(hf_cfg["tie_word_embeddings"]),
        )
    )
    cfg.quant.method = "b158" if q else "fp"
    return cfg


# HF architecture name → what bitjax knows of it. BitNetForCausalLM always has attn_sub_norm/ffn_sub_norm
# and Llama never does, so a transformer's `sub_norm` picks between them.
ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture(
        "transformer", "llama", lambda cfg: not cfg.sub_norm, _llama_kwargs, True, _transformer_from_hf
    ),
    "BitNetForCausalLM": Architecture(
        "transformer", "bitnet", lambda cfg: cfg.sub_norm, _llama_kwargs, True, _transformer_from_hf
    ),
    "Mamba2ForCausalLM": Architecture("mamba2", "mamba2", lambda cfg: True, _mamba2_kwargs, False),
}


def get_architecture(name: str, *, imported: bool = False) -> Architecture:
    """The registered HF architecture `name` (one bitjax imports, with `imported`); ValueError listing them."""
    known = tuple(a for a, spec in ARCHITECTURES.items() if spec.from_hf is not None or not imported)
    if name not in known:
        verb = "imported" if imported else "known"
        raise ValueError(f"architecture {name!r} is not {verb}: {' or '.join(known)}")
    return ARCHITECTURES[name]


def architecture(cfg) -> str:
    """The HF architecture that holds config.model (ValueError for a family with no HF layout)."""
    models.require_hf(cfg.name)
    return next(a for a, spec in ARCHITECTURES.items() if spec.family == cfg.name and spec.holds(cfg))


def hf_config(cfg) -> tuple[str, dict]:
    """(HF architecture, config kwargs) for config.model (:data:`ARCHITECTURES`): a transformer is BitNet
    when it has sub-norms, else Llama; a mamba2 config is Mamba2ForCausalLM. Quantization
    (BitNetQuantConfig) is not part of this dict."""
    arch = architecture(cfg)
    return arch, ARCHITECTURES[arch].to_hf(cfg)


def hf_quantized(cfg) -> bool:
    """Whether config.model is b1.58 as HF runs it (True), full precision (False), or neither (error).

    HF's BitNet quantizes every projection with per-tensor ternary absmean weights and per-token int8
    absmax activations, no in-layer norm, embeddings and lm_head full precision: b1.58 exactly.
    The gradient rule does not change the forward, so it is ignored here. HF's Mamba2 is full precision
    only: a quantized mamba2 config (e.g. bimamba's FBI projections) has no HF twin.
    """
    arch = architecture(cfg)
    if not ARCHITECTURES[arch].bitnet:
        if all(spec.is_fp for spec in models.quant_table(cfg).values()):
            return False
        raise ValueError(
            f"config.model.quant (method {cfg.quant.method!r}, rules {cfg.quant.rules!r}) has no HF "
            f"transformers equivalent: HF's {arch} is full precision; use 'fp'"
        )
    plain = lambda spec: dataclasses.replace(spec, grad="identity")
    table = {role: plain(spec) for role, spec in models.quant_table(cfg).items()}
    if all(spec.is_fp for spec in table.values()):
        return False
    b158 = QuantSpec("ternary_absmean", "absmax8")
    if all(spec == (QuantSpec() if r in ("embed", "lm_head") else b158) for r, spec in table.items()):
        return True
    recipe = "; ".join(f"{r}: {s}" for r, s in table.items())
    raise ValueError(
        f"config.model.quant (method {cfg.quant.method!r}, rules {cfg.quant.rules!r} → {recipe}) has "
        "no HF transformers equivalent: HF's BitNet runs b1.58 only (quant.method='b158' with no "
        "rules), or use 'fp'"
    )


def to_hf_model(model, cfg):
    """An HF transformers model (torch, float32, eval) holding `model`'s weights; needs torch + transformers.

    `fp` → LlamaForCausalLM (or BitNetForCausalLM with plain Linear when sub_norm); `b158` →
    BitNetForCausalLM whose projections are HF's AutoBitLinear in online mode (ternary WeightQuant and
    int8 ActQuant of the latent weights every call), lm_head full precision: b1.58 as HF runs it. Other
    methods have no HF twin (ValueError, see :func:`hf_quantized`). A mamba2 `fp` model →
    Mamba2ForCausalLM (torch path; without the mamba_ssm kernels it runs HF's torch_forward).
    """
    quantized = hf_quantized(cfg)
    import torch
    import transformers
    from transformers.integrations.bitnet import replace_with_bitnet_linear
    from transformers.utils.quantization_config import BitNetQuantConfig

    arch, kwargs = hf_config(cfg)
    conf = getattr(transformers, arch.replace("ForCausalLM", "Config"))(bos_token_id=0, eos_token_id=1, **kwargs)
    conf._attn_implementation = "eager"
    hf = getattr(transformers, arch)(conf)
    if quantized:
        replace_with_bitnet_linear(
            hf,
            modules_to_not_convert=["lm_head"],
            quantization_config=BitNetQuantConfig(linear_class="autobitlinear", quantization_mode="online"),
        )
    state = {k: torch.tensor(v) for k, v in hf_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - ({"lm_head.weight"} if cfg.tie_embeddings else set()):
        raise ValueError(f"HF {arch} and the bitjax model disagree: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval().float()


# ============================================================================ files: export
LINEAR_CLASSES = ("bitlinear", "autobitlinear")


def require(module: str, extra: str):
    """Import an optional dependency, or fail naming the bitjax extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed here and is not installed: pip install 'bitjax[{extra}]'") from e


def _is_projection(hf_name: str) -> bool:
    return hf_name.startswith("model.layers.") and hf_name.rsplit(".", 2)[-2] in PROJECTIONS


def packed_state_dict(model, cfg, linear_class: str = "autobitlinear") -> dict[str, np.ndarray]:
    """HF offline BitNet state dict: projections as packed uint8 codes + `weight_scale`, the rest float32.

    Per projection (torch orientation, W = kernelᵀ (out, in)), with (codes, γ) = ternary_absmean_codes(W):
        '….weight'        uint8 (out/4, in) = pack_ternary_2bit(codes)   (transformers' pack_weights)
        '….weight_scale'  float32 (1,): 1/γ for 'bitlinear' (BitLinear divides: y = x_q·codesᵀ / (s_x·ws)),
                          γ for 'autobitlinear' (AutoBitLinear multiplies: y = x̃·codesᵀ · ws)
    Needs a b1.58 config (:func:`hf_quantized`); BitLinear holds out/4 packed rows, so out % 4 == 0.
    """
    from bitjax.export.pack import pack_ternary_2bit
    from bitjax.quant.weights import ternary_absmean_codes

    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f"linear_class must be one of {LINEAR_CLASSES}, got {linear_class!r}")
    if not hf_quantized(cfg):
        raise ValueError("packed export is for b1.58 runs (quant.method='b158'); export fp runs unpacked")
    state = hf_state_dict(model)
    for name in [n for n in state if _is_projection(n)]:
        w = state[name]
        if w.shape[0] % 4:
            raise ValueError(f"{name} has {w.shape[0]} outputs; HF's packed BitLinear needs a multiple of 4")
        codes, gamma = ternary_absmean_codes(jnp.asarray(w.T))  # same codes/γ as the forward (kernel layout)
        gamma = float(np.asarray(gamma).reshape(()))
        state[name] = pack_ternary_2bit(np.asarray(codes).T)
        scale = 1.0 / gamma if linear_class == "bitlinear" else gamma
        state[name[: -len("weight")] + "weight_scale"] = np.array([scale], np.float32)
    return state


def save_hf(
    model, cfg, out_dir: str, *, linear_class: str = "autobitlinear", token_ids: dict | None = None, tokenizer=None
) -> dict:
    """Write an HF checkpoint directory: config.json + model.safetensors (float32 for non-packed tensors).

    b158 → quantization_config {quant_method: bitnet, linear_class, quantization_mode: offline}
    (microsoft/bitnet-b1.58-2B-4T ships linear_class autobitlinear, the default) and packed projections (:func:`packed_state_dict`), on
    BitNetForCausalLM when config.model.sub_norm (the 2B4T layout), else on LlamaForCausalLM: HF's BitNet
    quantizer swaps every Linear but lm_head of any model for BitLinear, so a Llama with that config
    is b1.58 without sub-norms. fp → LlamaForCausalLM (BitNetForCausalLM with plain Linear when
    sub_norm), float32. token_ids: {'bos_token_id', …} for the config. tokenizer: a bitjax tokenizer whose HF
    files (bitjax.export.tokenizer: tokenizer.json, tokenizer_config.json, …) and generation_config.json
    are written too, and whose bos/eos/pad ids go into config.json.
    Returns {'architecture', 'files', 'projection_bytes' (as stored), 'projection_bf16_bytes'}.
    """
    import json
    import os

    save_file = require("safetensors.numpy", "hf").save_file
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ValueError(f"the tokenizer's {tokenizer.vocab_size} ids do not fit the model's {cfg.vocab_size}")
        token_ids = {
            "bos_token_id": int(tokenizer.bos_id),
            "eos_token_id": int(tokenizer.eos_id),
            "pad_token_id": int(tokenizer.pad_id),
            **(token_ids or {}),
        }
    arch, kwargs = hf_config(cfg)
    quantized = hf_quantized(cfg)
    state = packed_state_dict(model, cfg, linear_class) if quantized else hf_state_dict(model)
    model_type = ARCHITECTURES[arch].model_type
    config = dict(
        architectures=[arch],
        model_type=model_type,
        dtype="float32",
        max_position_embeddings=2048,
        **kwargs,
        **(token_ids or {}),
    )
    if quantized:
        config["quantization_config"] = dict(
            quant_method="bitnet", linear_class=linear_class, quantization_mode="offline"
        )
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    files = ["config.json", "model.safetensors"]
    if tokenizer is not None:
        from bitjax.export.tokenizer import save_generation_config, save_tokenizer

        files += [*save_tokenizer(tokenizer, out_dir), save_generation_config(tokenizer, out_dir)]
    proj = [n for n in state if _is_projection(n) and n.endswith(".weight")]
    rows = 4 if quantized else 1  # a packed uint8 row holds 4 output rows
    n_weights = sum(state[n].shape[0] * rows * state[n].shape[1] for n in proj)
    stored = sum(
        state[n].nbytes + (state[n[: -len("weight")] + "weight_scale"].nbytes if quantized else 0) for n in proj
    )
    return {
        "architecture": arch,
        "files": files,
        "projection_bytes": stored,
        "projection_bf16_bytes": 2 * n_weights,
    }


# ============================================================================ files: import
def _read_state(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of an HF checkpoint directory's *.safetensors files, as numpy (bf16 → float32)."""
    import glob
    import os

    torch = require("torch", "hf")
    load_file = require("safetensors.torch", "hf").load_file
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {hf_dir} (pytorch_model.bin checkpoints are not read)")
    state = {}
    for f in files:
        for k, v in load_file(f).items():
            state[k] = (v if v.dtype == torch.uint8 else v.float()).numpy()
    return state


def model_config_from_hf(hf_cfg: dict):
    """config.model for an HF config.json dict of an imported architecture (:func:`get_architecture`).

    BitNetForCausalLM / LlamaForCausalLM: quantization_config {quant_method: bitnet} → method b158 (BitNet:
    with sub-norms; Llama: without), none → fp. HF features bitjax lacks are refused, not dropped.
    """
    arch = hf_architecture(hf_cfg)
    return get_architecture(arch, imported=True).from_hf(hf_cfg, arch)


# config.json's model_type → its architecture, for configs without `architectures` (transformers' own
# GGUF loader writes none)
MODEL_TYPES = {"llama": "LlamaForCausalLM", "bitnet": "BitNetForCausalLM", "mamba2": "Mamba2ForCausalLM"}


def hf_architecture(hf_cfg: dict) -> str:
    """The config.json's architecture: `architectures[0]`, else the one of its `model_type`, else ''."""
    archs = hf_cfg.get("architectures") or []
    return archs[0] if archs else MODEL_TYPES.get(hf_cfg.get("model_type", ""), "")


def quantization(hf_cfg: dict) -> dict:
    """The config's quantization_config, {} for none or quant_method gguf: transformers' GGUF loader
    dequantizes the file's tensors, so such a checkpoint holds plain float weights."""
    q = hf_cfg.get("quantization_config") or {}
    return {} if q.get("quant_method") == "gguf" else q


def _inv_scale(w: np.ndarray) -> np.float32:
    """1/γ of a kernel, as ternary_absmean computes it (it multiplies by 1/γ and divides by it)."""
    from bitjax.quant.weights import absmean_inv

    return np.float32(absmean_inv(jnp.asarray(w, jnp.float32), (-2, -1)).reshape(()))


def _smallest(lo: float, hi: float, ok) -> np.float32:
    """Smallest float32 x in [lo, hi] with ok(x), for ok monotone (False … True); bisection on the bits."""
    as_bits = lambda x: int(np.float32(x).view(np.int32))  # positive float32s are ordered as their bits
    a, b = as_bits(lo), as_bits(hi)
    while a < b:
        mid = (a + b) // 2
        a, b = (a, mid) if ok(np.int32(mid).view(np.float32)) else (mid + 1, b)
    return np.int32(a).view(np.float32)


def latent_from_codes(codes: np.ndarray, inv_scale: float) -> np.ndarray:
    """Latent float weights (kernel orientation) that b1.58 re-quantizes to `codes` with 1/γ = inv_scale.

    codes·γ would not do: its mean|W| is γ·p (p = fraction of non-zero codes), so the forward would
    scale by γ·p. W = codes·v with v ≈ γ/p has mean|W| ≈ γ and W/γ ≈ codes/p, which rounds and clips
    back to codes (1/p ≥ 1); every non-zero latent sits at ±v, far from a rounding threshold. The
    float32 mean of many equal values is off by up to ~1e-5 relative, in steps, so v is found by
    bisection over the float32 numbers (bitjax's own 1/max(mean|W|, ε) is monotone in v), and the last
    step is closed with one zero-code entry set to a small δ < γ/2 (it still rounds to 0). The result's
    1/γ equals inv_scale exactly when such v, δ exist, else the nearest value found.
    """
    codes = np.ascontiguousarray(codes, np.float32)  # C order: w.reshape(-1) below must be a view
    p = float(np.abs(codes).mean())
    if p == 0:
        return np.zeros_like(codes)
    target = np.float32(inv_scale)
    guess = 1.0 / (float(target) * p)
    v = _smallest(guess * 0.999, guess * 1.001, lambda x: _inv_scale(codes * x) <= target)
    w = codes * v
    zeros = np.flatnonzero(codes.reshape(-1) == 0)
    if _inv_scale(w) != target and zeros.size:  # a slightly smaller v, plus δ on one zero entry
        w = codes * np.nextafter(v, np.float32(0))
        flat = w.reshape(-1)

        def with_delta(d):
            flat[zeros[0]] = d
            return _inv_scale(w) <= target

        d = _smallest(1e-30, 0.4 / float(target), with_delta)
        flat[zeros[0]] = d
        if _inv_scale(w) != target:
            w = codes * v
    return w


def load_hf(hf_dir: str):
    """(config.model, model) from an HF BitNet (packed offline or online) or Llama directory.

    Offline BitNet: uint8 '….weight' (out/4, in) unpacked with HF's layout, γ = 1/weight_scale for
    linear_class bitlinear and weight_scale for autobitlinear; latent weights by :func:`latent_from_codes`.
    Online BitNet / Llama: the float weights as they are. Kernels are the HF weights transposed.
    """
    import json
    import os

    from bitjax.export.pack import unpack_ternary_2bit

    with open(os.path.join(hf_dir, "config.json")) as f:
        hf_cfg = json.load(f)
    cfg = model_config_from_hf(hf_cfg)
    q = quantization(hf_cfg)
    offline = q.get("quantization_mode", "offline") == "offline" if q else False
    bitlinear = q.get("linear_class", "bitlinear") == "bitlinear"
    state = _read_state(hf_dir)
    model = models.get_model(cfg.name)(cfg, rngs=nnx.Rngs(0))
    names = models.hf_param_names(model)
    used = set()
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = names[".".join(map(str, path))]
        if name not in state:
            raise ValueError(f"{hf_dir} has no tensor {name!r} (for bitjax parameter {'.'.join(map(str, path))})")
        value, shape = state[name], var.get_value().shape
        used.add(name)
        if path[-1] == "kernel":
            if value.dtype == np.uint8:
                if not offline:
                    raise ValueError(f"{name} is packed uint8 but quantization_mode is not 'offline'")
                scale_name = name[: -len("weight")] + "weight_scale"
                used.add(scale_name)
                ws = float(np.asarray(state[scale_name], np.float32).reshape(-1)[0])
                codes = unpack_ternary_2bit(value, shape[1]).T  # kernel (in, out), as bitjax reduces it
                # bitlinear divides by ws = 1/γ (bitjax's own multiplier); autobitlinear multiplies by γ
                value = latent_from_codes(codes, ws if bitlinear else np.float32(1.0) / np.float32(ws))
            else:
                value = value.T
        if value.shape != shape:
            raise ValueError(f"{name}: HF shape {value.shape} (as a kernel), bitjax expects {shape}")
        var.set_value(jnp.asarray(value, jnp.float32))
    extra = set(state) - used - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    if extra:
        raise ValueError(f"{hf_dir} holds tensors bitjax has no place for: {sorted(extra)[:8]}")
    return cfg, model
