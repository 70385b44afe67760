"""lm-eval's own command line with the `bitjax` model registered (lm-eval 0.4.13 has no plugin entry points).

    python -m bitjax.eval.lm_eval_cli --model bitjax --model_args workdir=W[,step=N,batch_size=B] --tasks ... \
        [--include_path tasks/] [--limit N] [--output_path out/]
"""

from lm_eval.__main__ import cli_evaluate

import bitjax.eval.harness  # noqa: F401  (registers `bitjax`)

if __name__ == "__main__":
    cli_evaluate()
