"""Generate text from a trained run's latest checkpoint.

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
    plan, params = plan_lib.restore_one_device(args.workdir, args.step)
    ids = plan.tokenizer.encode(args.prompt)
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
