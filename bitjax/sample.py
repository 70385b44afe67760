"""Generate text from a trained run's latest checkpoint (an empty --prompt starts from <eos>).

    python -m bitjax.sample --workdir workdirs/compare/b158 --prompt "def " --tokens 200
    python -m bitjax.sample --workdir runs/smollm2 --chat --prompt "What is the capital of France?" --temperature 0

--chat (a tokenizer with a chat template, e.g. an imported instruct model's): the prompt is one user
message rendered by the template (as transformers' apply_chat_template, add_generation_prompt=True), and
the reply is printed up to the first <eos>.

The model config and tokenizer are read from the workdir alone (bitjax.run.plan.restore), so the same
command works for any run, also one whose corpus is gone.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bitjax import errors
from bitjax.eval import sample
from bitjax.run import plan as plan_lib


def check_args(args) -> None:
    """UserError naming the first flag out of range, before anything loads (issue 29.13)."""
    for flag, value, low in (("--tokens", args.tokens, 1), ("--top_k", args.top_k, 0), ("--num", args.num, 1)):
        if value < low:
            raise errors.UserError(f"{flag} {value}: must be ≥ {low}")
    if not args.temperature >= 0:  # also NaN
        raise errors.UserError(f"--temperature {args.temperature}: must be ≥ 0 (0 = greedy)")
    if args.step is not None and args.step < 0:
        raise errors.UserError(f"--step {args.step}: must be ≥ 0")


def chat_prompt(tokenizer, text: str) -> str:
    """`text` as one user message through the tokenizer's chat template (jinja2, sandboxed, trim_blocks and
    lstrip_blocks as transformers renders it), ending with the assistant's turn; UserError without one."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise errors.UserError(f"--chat: this run's tokenizer ({tokenizer.name}) has no chat template")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise errors.UserError("--chat needs jinja2: pip install 'bitjax[hf]' (or jinja2)") from None

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):  # templates call it on a malformed conversation
        raise errors.UserError(f"--chat: the chat template refused the prompt: {message}")

    env.globals["raise_exception"] = raise_exception
    piece = lambda i: tokenizer._tok.id_to_token(int(i))  # an HF tokenizer: the only kind with a template
    return env.from_string(template).render(
        messages=[{"role": "user", "content": text}],
        add_generation_prompt=True,
        bos_token=piece(tokenizer.bos_id),
        eos_token=piece(tokenizer.eos_id),
    )


@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num", type=int, default=1, help="samples")
    p.add_argument("--chat", action="store_true", help="the prompt as a user message of the chat template")
    args = p.parse_args(argv)
    check_args(args)
    plan, params = plan_lib.restore_one_device(args.workdir, args.step)
    text = chat_prompt(plan.tokenizer, args.prompt) if args.chat else args.prompt
    ids = plan.tokenizer.encode(text)
    if len(ids) == 0:  # an empty prompt starts a document: training documents follow <eos>
        ids = np.asarray([plan.tokenizer.eos_id], np.int32)
    prompt = jnp.asarray(np.tile(ids[None], (args.num, 1)), jnp.int32)
    out = sample.generate(
        plan.model(params),
        prompt,
        args.tokens,
        rng=jax.random.key(args.seed),
        temperature=args.temperature,
        top_k=args.top_k or None,
    )
    rows = [np.asarray(row) for row in out]
    if args.chat:  # the reply alone, up to the end of the assistant's turn
        rows = [r[len(ids) :] for r in rows]
        rows = [
            r[: np.flatnonzero(r == plan.tokenizer.eos_id)[0]] if (r == plan.tokenizer.eos_id).any() else r
            for r in rows
        ]
    texts = [plan.tokenizer.decode(row) for row in rows]
    for t in texts:
        print(t)
        print("-" * 40)
    return texts


if __name__ == "__main__":
    main()
