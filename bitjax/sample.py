"""Generate text from a trained run's latest checkpoint (an empty --prompt starts from <eos>).

    python -m bitjax.sample --workdir workdirs/compare/b158 --prompt "def " --tokens 200

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
    args = p.parse_args(argv)
    check_args(args)
    plan, params = plan_lib.restore_one_device(args.workdir, args.step)
    ids = plan.tokenizer.encode(args.prompt)
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
    texts = [plan.tokenizer.decode(np.asarray(row)) for row in out]
    for t in texts:
        print(t)
        print("-" * 40)
    return texts


if __name__ == "__main__":
    main()
