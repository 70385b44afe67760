"""Generate text from a trained run's latest checkpoint.

    python -m bitjax.sample --workdir workdirs/compare/b158 --prompt "def " --tokens 200

The model config is read from the checkpoint itself, so the same command works for any run.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bitjax import errors
from bitjax.eval import sample, scoring


def load(workdir: str, step: int | None = None):
    """(Setup, params) of the checkpoint at `step` (default: latest) in `workdir`, on one device.

    UserError (and nothing created on disk) for a workdir without checkpoints or an absent step.
    """
    return scoring.load(workdir, step, devices=jax.devices()[:1], mesh=dict(data=1, fsdp=1, tensor=1))


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
    setup, params = load(args.workdir, args.step)
    ids = setup.tokenizer.encode(args.prompt)
    prompt = jnp.asarray(np.tile(ids[None], (args.num, 1)), jnp.int32)
    out = sample.generate(
        setup.model(params),
        prompt,
        args.tokens,
        rng=jax.random.key(args.seed),
        temperature=args.temperature,
        top_k=args.top_k or None,
    )
    texts = [setup.tokenizer.decode(np.asarray(row)) for row in out]
    for t in texts:
        print(t)
        print("-" * 40)
    return texts


if __name__ == "__main__":
    main()
