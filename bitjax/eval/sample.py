"""Autoregressive sampling with the model's decode cache (a transformer's KV cache, Mamba-2's conv + SSM
state): one prefill, then a `lax.fori_loop` of one-token decodes.

Everything (prefill, loop, sampling) is one jitted function, compiled once per
(model structure, prompt shape, max_new_tokens, temperature, top_k).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def sample_logits(logits: jax.Array, rng, temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
    """float[B, V] → int32[B]. temperature 0 → argmax; else softmax(logits/T) over the top_k largest."""
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def _generate(graphdef, state, prompt, rng, *, max_new_tokens, temperature, top_k):
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    total = p + max_new_tokens
    out = jnp.zeros((b, total), jnp.int32).at[:, :p].set(prompt)
    # prefill: the whole prompt at positions 0..P-1; the last position's logits give token P
    logits, cache = model.decode(prompt, model.init_cache(b, total), 0)
    out = out.at[:, p].set(sample_logits(logits[:, -1], jax.random.fold_in(rng, 0), temperature, top_k))

    def step(i, carry):  # feed token at position P+i-1, write token P+i
        out, cache = carry
        pos = p + i - 1
        logits, cache = model.decode(jax.lax.dynamic_slice_in_dim(out, pos, 1, axis=1), cache, pos)
        tok = sample_logits(logits[:, -1], jax.random.fold_in(rng, i), temperature, top_k)
        return jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], pos + 1, axis=1), cache

    return jax.lax.fori_loop(1, max_new_tokens, step, (out, cache))[0]


def generate(
    model, prompt: jax.Array, max_new_tokens: int, *, rng=None, temperature: float = 1.0, top_k: int | None = None
) -> jax.Array:
    """Continue `prompt` int32[B, P] by `max_new_tokens` tokens → int32[B, P + max_new_tokens].

    `model` needs `init_cache(batch, max_len)` and `decode(tokens, cache, index)` (see
    bitjax.models.transformer.Transformer and bitjax.models.mamba2.Mamba2LM). temperature 0 → greedy (rng unused);
    top_k keeps the k most likely tokens before sampling.
    """
    if not (hasattr(model, "init_cache") and hasattr(model, "decode")):
        raise ValueError(
            f"{type(model).__name__} has no init_cache/decode methods (a KV or state cache): this "
            f"model family does not support generation yet (see bitjax.models)"
        )
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be int32[B, P] with P ≥ 1, got shape {prompt.shape}")
    if max_new_tokens < 0 or temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(
            f"need max_new_tokens ≥ 0, temperature ≥ 0, top_k ≥ 1 or None; got {max_new_tokens}, {temperature}, {top_k}"
        )
    if max_new_tokens == 0:
        return prompt
    if rng is None:
        if temperature != 0:
            raise ValueError("sampling with temperature > 0 needs rng=jax.random.key(...)")
        rng = jax.random.key(0)
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        prompt,
        rng,
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_k=None if top_k is None else int(top_k),
    )
