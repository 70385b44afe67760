"""lm-eval's own command line with the `bitjax` model registered (lm-eval 0.4.13 has no plugin entry points).

    python -m bitjax.eval.lm_eval_cli --model bitjax --model_args workdir=W[,step=N,batch_size=B] --tasks ... \
        [--include_path tasks/] [--limit N] [--output_path out/]
"""

from lm_eval.__main__ import cli_evaluate

import bitjax.eval.harness  # noqa: F401  (registers `bitjax`)
from bitjax import errors


@errors.cli
def main():
    """lm-eval's CLI; a user error in the bitjax model's --model_args is one line `error: ...`, exit 2."""
    cli_evaluate()


if __name__ == "__main__":
    main()
