"""Evaluate a trained run: zero-shot tasks through lm-evaluation-harness, or perplexity of local text.

    python -m bitjax.eval --workdir W --tasks arc_easy,hellaswag,piqa [--limit N] [--out results.json]
    python -m bitjax.eval --workdir W --tasks my_task --include_path tasks/    # a local task YAML
    python -m bitjax.eval --workdir W --text_files 'corpus/*.txt' [--out ppl.json]

--tasks needs the eval extra (pip install 'bitjax[eval]'); --text_files does not. Offline: set
HF_DATASETS_OFFLINE=1 (and HF_HUB_OFFLINE=1) with a pre-filled HF datasets cache, or use
--include_path with task YAMLs over local JSON files (README, "Evaluate").
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from bitjax import errors


def _parse_mesh(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        if key not in ("data", "fsdp", "tensor") or not value.lstrip("-").isdigit():
            raise ValueError(f"--mesh {text!r}: expected data=N,fsdp=N,tensor=N (one of them may be -1)")
        out[key] = int(value)
    return {"data": 1, "fsdp": 1, "tensor": 1, **out}


def check_args(args) -> None:
    """Every argument checked before anything loads (issue 29.8, 29.12): UserError naming the flag."""
    from bitjax.eval.scoring import check_sizes

    with errors.as_user_errors():
        check_sizes(args.batch_size, args.max_length)
    if args.limit is not None and not args.limit > 0:
        raise errors.UserError(f"--limit {args.limit:g}: must be > 0 (docs per task, or a fraction below 1)")
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise errors.UserError(f"--num_fewshot {args.num_fewshot}: must be ≥ 0")
    if args.max_gen_toks < 1:
        raise errors.UserError(f"--max_gen_toks {args.max_gen_toks}: must be ≥ 1")
    if args.bootstrap_iters < 0:
        raise errors.UserError(f"--bootstrap_iters {args.bootstrap_iters}: must be ≥ 0")
    if args.step is not None and args.step < 0:
        raise errors.UserError(f"--step {args.step}: must be ≥ 0")
    if args.out and os.path.isdir(args.out):
        raise errors.UserError(f"--out {args.out} is a directory: name a JSON file")
    if args.tasks is not None:
        if not [t for t in args.tasks.split(",") if t]:
            raise errors.UserError(f"--tasks {args.tasks!r}: names no task")
        if args.include_path and not os.path.isdir(args.include_path):
            raise errors.UserError(f"--include_path {args.include_path}: not a directory")
    with errors.as_user_errors():
        _parse_mesh(args.mesh)


def check_tasks(args):
    """The TaskManager for --tasks; UserError naming any task lm-eval does not know (before the model loads)."""
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=args.include_path) if args.include_path else TaskManager()
    tasks = [t for t in args.tasks.split(",") if t]
    known = set(tm.match_tasks(tasks))
    missing = [t for t in tasks if t not in known and "*" not in t]
    if missing:
        raise errors.UserError(
            f"--tasks: unknown task(s) {', '.join(missing)} (python -m lm_eval --tasks list shows them; "
            "local task YAMLs need --include_path)"
        )
    return tm


def _write(path: str | None, obj) -> None:
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        print(f"wrote {path}")


def run_tasks(args, scorer, tm=None) -> dict:
    """lm_eval.simple_evaluate over `args.tasks`; prints the table, returns the JSON-able results."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    from bitjax.eval.harness import BitjaxLM

    lm = BitjaxLM(scorer=scorer, max_gen_toks=args.max_gen_toks)
    if tm is None:
        tm = TaskManager(include_path=args.include_path) if args.include_path else TaskManager()
    tasks = [t for t in args.tasks.split(",") if t]
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        limit=limit,
        task_manager=tm,
        log_samples=False,
        bootstrap_iters=args.bootstrap_iters,
    )
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    keep = {
        k: results[k]
        for k in ("results", "groups", "versions", "n-shot", "higher_is_better", "n-samples")
        if k in results
    }
    keep["config"] = {
        "workdir": args.workdir,
        "step": args.step,
        "tasks": tasks,
        "limit": args.limit,
        "num_fewshot": args.num_fewshot,
        "max_length": scorer.max_length,
    }
    return keep


@errors.cli
def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bitjax.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workdir", required=True, help="a trained run's workdir")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--tasks", help="comma-separated lm-eval task names")
    what.add_argument("--text_files", action="append", help="glob(s) of text files to score (repeatable)")
    p.add_argument("--limit", type=float, default=None, help="docs per task (< 1: a fraction)")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--include_path", default=None, help="folder of extra task YAMLs")
    p.add_argument("--batch_size", type=int, default=8, help="rows per compiled batch")
    p.add_argument("--max_length", type=int, default=None, help="model context (default: the run's seq_len)")
    p.add_argument("--max_gen_toks", type=int, default=256, help="generate_until default length")
    p.add_argument("--bootstrap_iters", type=int, default=1000, help="stderr bootstrap (0 = none)")
    p.add_argument("--mesh", default=None, help="data=N,fsdp=N,tensor=N (default: the run's config.mesh)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    check_args(args)

    tm = None
    if args.tasks is not None:  # before loading anything
        try:
            import lm_eval  # noqa: F401
        except ImportError as e:
            raise errors.UserError(f"--tasks needs lm-evaluation-harness: pip install 'bitjax[eval]' ({e})") from None
        tm = check_tasks(args)
    from bitjax.eval import perplexity
    from bitjax.eval.scoring import Scorer
    from bitjax.run import plan as plan_lib

    with errors.as_user_errors():
        files = perplexity.expand_paths(args.text_files) if args.text_files else None
        plan, params = plan_lib.restore(args.workdir, args.step, mesh=_parse_mesh(args.mesh))
    scorer = Scorer(plan, params, batch_size=args.batch_size, max_length=args.max_length)
    if files is not None:
        with errors.as_user_errors():  # an empty, binary or undecodable file: one line, as in training
            out = perplexity.score_files(scorer, files)
        out.update(workdir=args.workdir, step=args.step, max_length=scorer.max_length, tokenizer=scorer.tokenizer.name)
        print(
            f"{out['documents']} files, {out['tokens']} tokens, {out['bytes']} bytes: "
            f"bits/byte {out['bits_per_byte']:.4f}, nats/token {out['nats_per_token']:.4f}, "
            f"token ppl {out['token_ppl']:.3f}"
        )
    else:
        out = run_tasks(args, scorer, tm)
    _write(args.out, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
