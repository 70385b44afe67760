"""EleutherAI lm-evaluation-harness adapter: a trained bitjax run as the harness model `bitjax`.

    python -m bitjax.eval --workdir W --tasks arc_easy,hellaswag [--limit N]        # the usual entry
    python -m bitjax.eval.lm_eval_cli --model bitjax --model_args workdir=W,step=N,batch_size=B --tasks ...
        # lm-eval's own CLI, with `bitjax` registered (lm-eval 0.4.13 has no model plugin entry
        # points, so a bare `lm_eval --model bitjax` cannot find it; importing this module registers it)

Importing this module registers the model (it needs the `eval` extra: pip install 'bitjax[eval]').
Request types:
  loglikelihood(context, continuation): Σ log p(continuation tokens | context) and whether each of
    them is the argmax. Tokenized as the harness's TemplateLM does (context + continuation encoded
    whole and split at the context's length; trailing context spaces move to the continuation; an
    empty context becomes <eos>, the token every training document follows).
  loglikelihood_rolling(text): Σ log p over <eos> text in non-overlapping windows of the model's
    context (bitjax.eval.scoring.rolling_windows).
  generate_until(context, {until, max_gen_toks, do_sample, temperature}): the KV-cache sampler
    (bitjax.eval.sample.generate), cut at the first <eos> and then at the first stop sequence.
Scoring runs in fixed (batch_size, length bucket) shapes (bitjax.eval.scoring.Scorer); generation
compiles once per distinct (prompt length, max_gen_toks), since the sampler takes one prompt length
per batch. One process (all its devices); the run's mesh by default.
"""

from __future__ import annotations

import collections

import jax
import lm_eval.models  # noqa: F401  (registers the harness's own models before ours: see get_model)
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model

from bitjax import errors
from bitjax.eval import sample
from bitjax.eval.scoring import Scorer, rolling_windows
from bitjax.run import plan as plan_lib

DEFAULT_MAX_GEN_TOKS = 256
HARNESS_ARGS = ("device", "max_batch_size")  # what lm-eval itself passes every model; accepted, ignored


def _int(name: str, value, low: int) -> int:
    """A --model_args integer ≥ low, or UserError naming it (issue 29.8, 29.13)."""
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise errors.UserError(f"--model_args {name}={value!r}: expected an integer") from None
    if out < low or isinstance(value, bool) or (isinstance(value, float) and value != out):
        raise errors.UserError(f"--model_args {name}={value!r}: expected an integer ≥ {low}")
    return out


def _mesh(value) -> dict | None:
    """mesh: a dict, or 'data=N' / 'data=N;fsdp=N;tensor=N' (a comma would end --model_args' value)."""
    if value is None or isinstance(value, dict):
        return value
    from bitjax.eval.__main__ import _parse_mesh

    try:
        return _parse_mesh(str(value).replace(";", ","))
    except ValueError:
        raise errors.UserError(
            f"--model_args mesh={value!r}: expected data=N;fsdp=N;tensor=N (one of them may be -1)"
        ) from None


@register_model("bitjax")
class BitjaxLM(TemplateLM):
    """lm-eval model over a bitjax workdir (or an existing Scorer).

    workdir, step: the run and checkpoint (default: latest). batch_size: rows per compiled batch
    ('auto' = 8). max_length: the model context in tokens (default config.seq_len). mesh: axis sizes
    {data, fsdp, tensor} (default: the run's). Other harness arguments (device, max_batch_size) are
    accepted and ignored: devices come from JAX.
    """

    def __init__(
        self,
        workdir: str | None = None,
        step: int | str | None = None,
        batch_size: int | str = 8,
        max_length: int | str | None = None,
        mesh: dict | None = None,
        scorer: Scorer | None = None,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        seed: int | str = 0,
        **unused,
    ):
        super().__init__()
        typos = sorted(set(unused) - set(HARNESS_ARGS))
        if typos:  # a typo (stpe=5) must not be ignored
            raise errors.UserError(
                f"--model_args: unknown argument(s) {', '.join(typos)} for the bitjax model "
                "(it takes workdir, step, batch_size, max_length, mesh, max_gen_toks, seed)"
            )
        auto = batch_size in (None, "auto") or str(batch_size).startswith("auto")
        bs = 8 if auto else _int("batch_size", batch_size, 1)
        self.max_gen_toks = _int("max_gen_toks", max_gen_toks, 1)
        self.seed = _int("seed", seed, 0)
        if scorer is None:
            if not workdir:
                raise errors.UserError("the bitjax model needs --model_args workdir=<a trained run's workdir>")
            step = None if step in (None, "") else _int("step", step, 0)
            max_length = None if max_length is None else _int("max_length", max_length, 1)
            plan, params = plan_lib.restore(str(workdir), step, mesh=_mesh(mesh), field="--model_args workdir")
            scorer = Scorer(plan, params, batch_size=bs, max_length=max_length)
        self.scorer = scorer
        self.tok = scorer.tokenizer
        self._model = None

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """--model_args 'workdir=W,step=N,batch_size=B'; they win over the harness's own --batch_size etc."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    # ---------------------------------------------------------------- tokenizer (TemplateLM)
    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tok.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        del add_special_tokens, kwargs  # bitjax tokenizers add no specials
        return self.tok.encode(string).tolist()

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(np.asarray(tokens, np.int32))

    # ---------------------------------------------------------------- requests
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """requests: ((context, continuation), context_enc, continuation_enc) → [(logprob, is_greedy)]."""
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        todo, where = [], []
        for i, (_, ctx, cont) in enumerate(requests):
            if not cont:  # nothing to score: log 1
                out[i] = (0.0, True)
            else:
                todo.append((list(ctx) + list(cont), len(cont)))
                where.append(i)
        if todo:
            logp, greedy = self.scorer.score(todo)
            for i, lp, g in zip(where, logp, greedy):
                out[i] = (float(lp), bool(g))
        for (key, _, _), res in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, req in enumerate(requests):
            for w in rolling_windows(self.tok_encode(req.args[0]), self.eot_token_id, self.max_length):
                windows.append(w)
                owner.append(i)
        totals = np.zeros(len(requests))
        if windows:
            logp, _ = self.scorer.score(windows)
            np.add.at(totals, np.asarray(owner), logp)
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, float(total))
        return [float(t) for t in totals]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        if self._model is None:
            self._model = self.scorer.model()
        groups = collections.defaultdict(list)  # (prompt length, max new tokens, temperature) → [(i, prompt)]
        stops = []
        for i, req in enumerate(requests):
            context, kw = req.args
            kw = dict(kw or {})
            until = kw.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            stops.append([s for s in until if s])
            max_new = int(kw.get("max_gen_toks", self.max_gen_toks))
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample", False) else 0.0
            ids = self.tok_encode(context)[-self.max_length :] or [self.eot_token_id]
            groups[(len(ids), max_new, temperature)].append((i, ids))
        out = [""] * len(requests)
        bs = self.scorer.batch_size
        for g, ((plen, max_new, temperature), items) in enumerate(sorted(groups.items())):
            for start in range(0, len(items), bs):
                chunk = items[start : start + bs]
                prompt = np.asarray([ids for _, ids in chunk] + [chunk[0][1]] * (bs - len(chunk)), np.int32)
                toks = sample.generate(
                    self._model,
                    self.scorer.plan.global_batch(prompt),
                    max_new,
                    rng=jax.random.key(self.seed + 1000 * g + start),
                    temperature=temperature,
                )
                toks = np.asarray(jax.device_get(toks))[:, plen:]
                for row, (i, _) in enumerate(chunk):
                    out[i] = self._cut(toks[row], stops[i])
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def _cut(self, tokens: np.ndarray, stops: list[str]) -> str:
        """Generated tokens → text up to the first <eos>, then up to the first stop sequence."""
        eos = np.flatnonzero(tokens == self.eot_token_id)
        text = self.tok_decode(tokens[: eos[0]] if len(eos) else tokens)
        for s in stops:
            text = text.split(s, 1)[0]
        return text
