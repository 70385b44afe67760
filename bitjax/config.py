"""Config-file helpers shared by every config and every component's config section.

A config file is `configs/<name>.py` with `get_config(arg)`; the command line is
`--config configs/transformer.py:quant=b158,size=tiny --config.total_steps=500`. The trainer's
fields (and their validation) are bitjax.run.config; each model family's are its own
(bitjax.models). This module imports neither: it sits below both.

    parse_arg(arg, **defaults)         'quant=b158,size=tiny' → ConfigDict of the config file's arguments
    check_fields(cfg, defaults, name)  the one 'unknown / missing field' check of every config section
    to_dict(config)                    a ConfigDict (or dict) as a plain dict
"""

from __future__ import annotations

import ml_collections
from ml_collections import ConfigDict

from bitjax.quant.registry import parse_options


def parse_arg(arg: str | None, **defaults) -> ConfigDict:
    """'quant=b158,size=tiny' → ConfigDict(quant='b158', size='tiny'); keys must be in `defaults`.

    Values are Python literals when they parse as one (ints, floats, bools),
    strings otherwise.
    """
    out = ConfigDict(defaults)
    for key, value in parse_options(arg):
        if key not in defaults:
            raise ValueError(f"unknown config argument {key!r} in {arg!r}; known: {sorted(defaults)}")
        out[key] = value
    return out


def check_fields(cfg, defaults, name: str, start_from: str, *, missing_ok: bool = False) -> None:
    """ValueError (one line) when `cfg` has a field `defaults` lacks (a typo?) or lacks one of its fields.

    cfg, defaults: ConfigDicts or dicts (only their top-level keys are compared). name: the section as
    the user writes it ('config.optim'). start_from: where complete defaults come from (the fix).
    missing_ok: fields absent from `cfg` are fine (they take their defaults).
    """
    keys, known = set(cfg.keys()), set(defaults.keys())
    unknown, missing = sorted(keys - known), [] if missing_ok else sorted(known - keys)
    if unknown or missing:
        parts = [f"unknown field(s) {unknown} (a typo? known: {', '.join(sorted(known))})"] if unknown else []
        parts += [f"missing field(s) {missing}"] if missing else []
        raise ValueError(f"{name}: {', '.join(parts)}; start from {start_from}")


def to_dict(config) -> dict:
    return config.to_dict() if isinstance(config, (ConfigDict, ml_collections.FrozenConfigDict)) else dict(config)
