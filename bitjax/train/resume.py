"""Whether a workdir may be (re)used: fingerprints of the token stream, the checks before a resume, the lock.

A checkpoint's meta stores the run config and `data_fingerprint` (what its tokens were made of); a run
that finds checkpoints in its workdir resumes only if its model, data, seed, batch and teacher are the
ones saved, so two different runs never mix in one workdir. Nothing on disk changes when it refuses.
"""

from __future__ import annotations

import json

from ml_collections import ConfigDict

from bitjax import config as config_lib
from bitjax import errors
from bitjax.run import config as run_config
from bitjax.train import distributed
from bitjax.train import workdir as workdir_lib

# Data fields that define the token stream (not where it is cached, nor how much of it is evaluated).
DATA_IDENTITY = (
    "name",
    "paths",
    "text_key",
    "train_split",
    "validation_fraction",
    "encoding",
    "tokenizer",
    "vocab_size",
    "spm_sample_bytes",
)


def data_fingerprint(data_config, tokenizer_name: str | None = None) -> dict:
    """What a checkpoint's token stream was made from: the data fields above + the tokenizer's identity."""
    d = json.loads(json.dumps(config_lib.to_dict(data_config)))
    fp = {f"data.{k}": d[k] for k in DATA_IDENTITY if k in d}
    if d.get("tokenizer") in ("byte", "hf"):  # only sentencepiece reads these (hf: its name is its hash)
        for k in ("data.vocab_size", "data.spm_sample_bytes"):
            fp.pop(k, None)
    if tokenizer_name is not None:  # e.g. a sentencepiece model retrained on other text has another name
        fp["tokenizer vocabulary"] = tokenizer_name
    return fp


def _diffs(saved, now, path: str) -> list[str]:
    """'config.a.b: saved X, now Y' for each leaf that differs."""
    if isinstance(saved, dict) and isinstance(now, dict):
        return [
            d for k in sorted(set(saved) | set(now), key=str) for d in _diffs(saved.get(k), now.get(k), f"{path}.{k}")
        ]
    return [] if saved == now else [f"{path}: saved {saved!r}, now {now!r}"]


def check_compatible(config: ConfigDict, meta: dict, workdir: str, tokenizer_name: str) -> None:
    """Refuse to resume a workdir written by a different model/data/seed: nothing is overwritten."""
    saved = meta.get("config", {})
    if saved:  # completed with today's defaults: a field added since (model.quant.warmup_steps = 0) is no change
        saved = json.loads(json.dumps(run_config.with_defaults(saved).to_dict()))
    now = json.loads(json.dumps(config_lib.to_dict(config)))
    diffs = []
    for key in ("model", "seq_len", "batch_size", "seed", "distill"):
        if key in saved:
            diffs += _diffs(saved[key], now[key], f"config.{key}")
    # checkpoints from before the fingerprint was stored: compare the data fields of their config
    saved_fp = meta.get("data") or data_fingerprint(saved.get("data", {}))
    now_fp = data_fingerprint(config.data, tokenizer_name)
    diffs += [
        f"config.{k}: saved {saved_fp[k]!r}, now {now_fp[k]!r}"
        if k.startswith("data.")
        else f"the {k}: saved {saved_fp[k]!r}, now {now_fp[k]!r}"
        for k in now_fp
        if k in saved_fp and saved_fp[k] != now_fp[k]
    ]
    if diffs:
        fields = sorted({d.split(":")[0].split(".")[1] if d.startswith("config.") else "data" for d in diffs})
        raise errors.UserError(
            f"{workdir} holds checkpoints of a run with a different "
            f"{' / '.join('config.' + f for f in fields)} ({'; '.join(diffs)}). Resuming would mix "
            f"incompatible runs: use a new --workdir, or restore the original value(s). Nothing was "
            f"changed on disk."
        )


def check_same_teacher(config: ConfigDict, saved_meta: dict, teacher_step: int | None, workdir: str) -> None:
    """Refuse to resume a distilled run whose teacher's latest checkpoint is no longer the one it started from."""
    if saved_meta.get("teacher_step", teacher_step) != teacher_step:
        raise errors.UserError(
            f"{workdir} was distilled from step {saved_meta['teacher_step']} of "
            f"config.distill.teacher_workdir={config.distill.teacher_workdir!r}, whose latest checkpoint is "
            f"now step {teacher_step}: resuming would change the teacher mid-run. Use a new --workdir, "
            f"or restore that teacher checkpoint. Nothing was changed on disk."
        )


def lock_workdir(workdir: str, lead: bool, process_count: int) -> workdir_lib.Lock | None:
    """Process 0 checks, creates and locks `workdir`; in multi-process runs the others learn whether it could."""
    lock, error = None, None
    if lead:
        try:
            workdir_lib.prepare(workdir)
            lock = workdir_lib.Lock(workdir).acquire()
        except errors.UserError as e:
            error = e
    if process_count > 1 and distributed.any_process(error is not None) and error is None:
        if lock is not None:
            lock.release()
        error = errors.UserError(f"process 0 could not use --workdir {workdir}; see its error")
    if error is not None:
        raise error
    return lock
