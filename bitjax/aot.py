"""Compile a run's step for a TPU topology on a CPU machine (ahead of time; nothing runs).

  python -m bitjax.aot --topology v5e:2x2 --config configs/transformer.py:size=small [--config.x=y]
      [--step train|eval] [--json F] [--hlo F]

The run is built exactly as `bitjax.main` builds it (bitjax.train.trainer.Setup: the Plan's mesh, axis
rules and shardings, the same jitted train step), over the devices of
`jax.experimental.topologies.get_topology_desc(topology, "tpu")`, lowered with abstract state
(ShapeDtypeStruct + sharding) and compiled by libtpu — MaxText's train_compile.py habit. Reported per
chip: XLA's memory analysis (argument, output, alias, temp, peak) against the chip's HBM, `fits`, the
compile time, the compiled flops / bytes (cost analysis) against the analytic 6·N·tokens + attention
(Kaplan et al. 2020, eq. 2.1: 12·n_layers·L·d per token forward+backward for the scores), the
collectives in the optimized HLO with their bytes, and a roofline lower bound on the step time
max(flops / peak, bytes / HBM bandwidth) with the MFU it implies. Needs the `tpu` extra
(`pip install -e '.[tpu]'`); without it, or for an unknown topology, one line `error: ...`, exit 2.
"""

from __future__ import annotations

import json
import os
import re
import time

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags

from bitjax import errors
from bitjax.run import checkpoint as ckpt_lib
from bitjax.run import plan as plan_lib

GIB = 1024**3
# Per chip: peak dense bf16 FLOP/s, int8 OP/s, HBM GiB, HBM bytes/s (Google Cloud TPU system architecture
# pages: v4, v5e, v5p, v6e "Trillium").
CHIPS = {
    "v4": dict(bf16=275e12, int8=275e12, hbm_gib=32, hbm_bw=1228e9),
    "v5e": dict(bf16=197e12, int8=394e12, hbm_gib=16, hbm_bw=819e9),
    "v5p": dict(bf16=459e12, int8=918e12, hbm_gib=95, hbm_bw=2765e9),
    "v6e": dict(bf16=918e12, int8=1836e12, hbm_gib=32, hbm_bw=1640e9),
}
_KIND = {
    "TPU v4": "v4",
    "TPU v5 lite": "v5e",
    "TPU v5e": "v5e",
    "TPU v5": "v5p",
    "TPU v5p": "v5p",
    "TPU v6 lite": "v6e",
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4}
_DTYPE_BYTES.update({"s64": 8, "u64": 8, "f64": 8, "s4": 0.5, "u4": 0.5})

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/transformer.py:size=1b")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology as libtpu names it: v5e:2x2, v5p:4x4x4, v6e:8x8 …")
_STEP = flags.DEFINE_enum("step", "train", ["train", "eval"], "Which step to compile.")
_JSON = flags.DEFINE_string("json", None, "Also write the report as JSON to this file.")
_HLO = flags.DEFINE_string("hlo", None, "Also write the compiled (optimized) HLO text to this file.")
flags.mark_flags_as_required(["config", "topology"])


def topology_devices(name: str):
    """The devices of TPU topology `name` (UserError without libtpu or for an unknown name)."""
    from jax.experimental import topologies

    # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) meant for real chips; compiling only, several
    # processes (a test and a background AOT run) may share this machine
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return topologies.get_topology_desc(name, "tpu").devices
    except RuntimeError as e:
        if "not installed" in str(e):
            raise errors.UserError("TPU compiler (libtpu) not installed: pip install -e '.[tpu]'") from e
        raise errors.UserError(f"--topology={name!r}: {str(e).splitlines()[0]}") from e
    except Exception as e:  # libtpu: JaxRuntimeError INVALID_ARGUMENT for a bad name
        raise errors.UserError(
            f"--topology={name!r} is not a TPU topology libtpu knows (e.g. v5e:2x2, v5p:2x2x2, v6e:4x4): "
            f"{str(e).splitlines()[0]}"
        ) from e


def chip_of(device) -> str:
    """'v5e' etc. from a TPU device's device_kind."""
    kind = device.device_kind
    if kind not in _KIND:
        raise errors.UserError(f"no chip table entry for device kind {kind!r}; known: {sorted(_KIND)}")
    return _KIND[kind]


def _shape_bytes(shape_text: str) -> float:
    """Bytes of an HLO result type: 'f32[8,128]{1,0}' or a tuple '(bf16[2], s32[])'."""
    total = 0.0
    for dt, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape_text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += _DTYPE_BYTES.get(dt, 0) * n
    return total


def collectives(hlo_text: str) -> dict[str, dict[str, float]]:
    """{op: {count, bytes}} of the collectives in optimized HLO text (result sizes, per chip; -start ops of
    async pairs counted once, their -done halves skipped)."""
    out: dict[str, dict[str, float]] = {}
    pat = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for line in hlo_text.splitlines():
        m = pat.search(line)
        if m:
            d = out.setdefault(m.group(2), {"count": 0, "bytes": 0.0})
            d["count"] += 1
            # an async -start returns (operands, results): half its tuple is the result
            d["bytes"] += _shape_bytes(m.group(1)) / (2 if m.group(3) else 1)
    return out


def full_batch_values(hlo_text: str, batch: int, seq_len: int) -> int:
    """How many HLO values have the whole global batch × sequence as their leading dims ([B, L, …]).

    With the batch sharded over k > 1 chips, every activation is [B/k, L, …] per chip: a nonzero count
    means some activation is batch-replicated (what left unconstrained propagation does, issue 26)."""
    return len(re.findall(rf"=\s*\(?[a-z]+\d*\[{batch},{seq_len}[,\]]", hlo_text))


_HLO_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\(?([a-z]+\d*)\[", re.MULTILINE)
_HLO_MATMUL = re.compile(r"=\s*([a-z]+\d*)\[[\d,]*\]\S*\s+(?:dot|convolution)\(([^)]*)\)")


def int8_dots(hlo_text: str) -> int:
    """How many matmuls (dot, or the convolution libtpu lowers a dot_general to) take two s8 operands and
    give s32: an int8 × int8 → int32 product on the MXU. Operand types come from the operands' own
    definitions (TPU HLO lists operands by name only, `convolution(%fusion.1, %fusion.2)`, the int8
    codes made inside those fusions; HLO names are unique in a module)."""
    types = dict(_HLO_DEF.findall(hlo_text))
    count = 0
    for out, operands in _HLO_MATMUL.findall(hlo_text):
        kinds = [types.get(name) for name in re.findall(r"%([\w.\-]+)", operands)]
        count += out == "s32" and kinds == ["s8", "s8"]
    return count


def analytic_flops(config, num_params: int, step: str) -> float:
    """6·N·tokens (+ 12·n_layers·L·d·tokens for attention scores) for train; a third of it for eval."""
    tokens = config.batch_size * config.seq_len
    m = config.model
    attn = 12 * m.get("n_layers", 0) * config.seq_len * m.get("d_model", 0) * tokens if "n_heads" in m else 0
    total = 6 * num_params * tokens + attn
    return total if step == "train" else total / 3


def int8_flops(config, num_params: int) -> float:
    """The flops `model.int8_matmul` runs on the int8 units: the quantized projections' forward,
    2·N_proj·tokens, N_proj = the parameters less the embedding table(s) (vocab·d, twice when untied; norms
    are negligible). The backward (4·N·tokens) and attention stay in bf16."""
    m = config.model
    embed = m.get("vocab_size", 0) * m.get("d_model", 0) * (1 if m.get("tie_embeddings", False) else 2)
    return 2 * max(num_params - embed, 0) * config.batch_size * config.seq_len


def _sum_cost(cost, key: str) -> float:
    cost = cost if isinstance(cost, (list, tuple)) else [cost]
    return float(sum((c or {}).get(key, 0.0) for c in cost))


def compile_report(
    config, topology: str, step: str = "train", num_devices: int | None = None, hlo_path: str | None = None
) -> dict:
    """Compiles `step` of `config` for `topology` (its first `num_devices` chips: libtpu has no 1-chip v5e
    topology); the report (see the module docstring) as a dict. `hlo_path`: also write the optimized HLO."""
    from bitjax.train import trainer  # the trainer's own Setup: same mesh, rules, shardings, step

    devices = topology_devices(topology)[:num_devices]
    chip = chip_of(devices[0])
    spec = CHIPS[chip]
    config = config.copy_and_resolve_references() if hasattr(config, "copy_and_resolve_references") else config
    with config.unlocked():
        if config.model.get("vocab_size") in (None, 0):  # the tokenizer's, padded as plan.resolve pads it
            v = 259 if config.data.tokenizer == "byte" else config.data.vocab_size
            config.model.vocab_size = -(-v // plan_lib.VOCAB_MULTIPLE) * plan_lib.VOCAB_MULTIPLE
    setup = trainer.Setup(config, devices=devices, data=False)
    batch = {
        k: jax.ShapeDtypeStruct((config.batch_size, config.seq_len), dt, sharding=setup.batch_sharding)
        for k, dt in (("inputs", jnp.int32), ("targets", jnp.int32), ("mask", jnp.float32))
    }
    t0 = time.perf_counter()
    if step == "train":
        state = ckpt_lib.abstract_with_shardings(setup.abstract_state, setup.state_sharding)
        lowered = setup.train_step.lower(state, batch)
    else:
        params = ckpt_lib.abstract_with_shardings(setup.abstract_state["params"], setup.state_sharding["params"])
        lowered = setup.eval_step.lower(params, batch)
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        # libtpu refuses a program whose temporaries exceed the chip: report that figure, not a traceback
        m = re.search(r"HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM \(([\d.]+)([KMGT])\)", str(e))
        if "RESOURCE_EXHAUSTED" not in str(e) or not m:
            raise
        unit = lambda u: 1024 ** "KMGT".index(u) * 1024
        temp = int(float(m.group(1)) * unit(m.group(2)))
        return {
            "topology": topology,
            "chip": chip,
            "chips": len(devices),
            "step": step,
            "mesh": dict(setup.mesh.shape),
            "batch_size": config.batch_size,
            "seq_len": config.seq_len,
            "num_params": setup.num_params,
            "fits": False,
            "hbm_bytes_per_chip": spec["hbm_gib"] * GIB,
            "hbm_available_bytes_per_chip": int(float(m.group(3)) * unit(m.group(4))),
            "temp_bytes_per_chip": temp,
            "peak_bytes_per_chip": None,
            "argument_bytes_per_chip": None,
            "flops_per_step": None,
            "compile_s": time.perf_counter() - t0,
            "error": str(e).splitlines()[0],
        }
    compile_s = time.perf_counter() - t0

    mem = compiled.memory_analysis()
    arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
    alias, temp = int(mem.alias_size_in_bytes), int(mem.temp_size_in_bytes)
    peak = arg + out - alias + temp  # donated state is aliased: counted once
    hbm = spec["hbm_gib"] * GIB
    cost = compiled.cost_analysis()
    flops_chip, bytes_chip = _sum_cost(cost, "flops"), _sum_cost(cost, "bytes accessed")
    n = len(devices)
    analytic = analytic_flops(config, setup.num_params, step)
    int8 = bool(config.model.get("int8_matmul", False))
    # XLA's cost analysis counts a while loop's body once: with scan_layers (lax.scan over the layers) the
    # compiled flops miss (n_layers − 1) layers, so the roofline then takes the analytic count instead
    scanned = bool(config.model.get("scan_layers", False))
    total = analytic if scanned else flops_chip * n
    fast = min(int8_flops(config, setup.num_params), total) if int8 else 0.0  # the int8 share, at the int8 rate
    t_flops = ((total - fast) / spec["bf16"] + fast / spec["int8"]) / n
    t_bytes = bytes_chip / spec["hbm_bw"]
    t_bound = max(t_flops, t_bytes)
    hlo = compiled.as_text()
    if hlo_path:
        with open(hlo_path, "w") as f:
            f.write(hlo)
    return {
        "topology": topology,
        "chip": chip,
        "chips": n,
        "step": step,
        "mesh": dict(setup.mesh.shape),
        "batch_size": config.batch_size,
        "seq_len": config.seq_len,
        "num_params": setup.num_params,
        "fits": peak <= hbm,
        "hbm_bytes_per_chip": hbm,
        "peak_bytes_per_chip": peak,
        "temp_bytes_per_chip": temp,
        "argument_bytes_per_chip": arg,
        "output_bytes_per_chip": out,
        "alias_bytes_per_chip": alias,
        "compile_s": compile_s,
        "flops_per_step": flops_chip * n,
        "flops_scan_undercount": scanned,  # flops_per_step counts the scanned layer body once
        "flops_per_chip": flops_chip,
        "bytes_accessed_per_chip": bytes_chip,
        "analytic_flops_per_step": analytic,
        "collectives": collectives(hlo),
        "int8_dots": int8_dots(hlo),
        "full_batch_values": full_batch_values(hlo, config.batch_size, config.seq_len),
        "roofline_s": t_bound,
        "roofline_bound": "compute" if t_flops >= t_bytes else "hbm",
        "mfu_at_roofline": analytic / (n * spec["bf16"] * t_bound) if t_bound > 0 else 0.0,
    }


def format_report(r: dict) -> str:
    g = lambda b: f"{b / GIB:.2f} GiB"
    if "error" in r:  # out of HBM at compile time: libtpu gives the temporaries only
        return (
            f"{r['step']} step, {r['topology']} ({r['chips']}× {r['chip']}), mesh {r['mesh']}, batch "
            f"{r['batch_size']}×{r['seq_len']}: DOES NOT FIT: temp {g(r['temp_bytes_per_chip'])} per chip > "
            f"{g(r['hbm_available_bytes_per_chip'])} available (compile {r['compile_s']:.1f} s)"
        )
    lines = [
        (
            f"{r['step']} step, {r['topology']} ({r['chips']}× {r['chip']}), mesh {r['mesh']}, "
            f"batch {r['batch_size']}×{r['seq_len']}, {r['num_params'] / 1e6:.1f}M params"
        ),
        f"per chip: argument {g(r['argument_bytes_per_chip'])}, output {g(r['output_bytes_per_chip'])}, "
        f"alias {g(r['alias_bytes_per_chip'])}, temp {g(r['temp_bytes_per_chip'])}, "
        f"peak {g(r['peak_bytes_per_chip'])} of {g(r['hbm_bytes_per_chip'])} HBM: "
        + ("fits" if r["fits"] else "DOES NOT FIT"),
        (
            f"compile {r['compile_s']:.1f} s; compiled {r['flops_per_step']:.3e} flops/step "
            f"(analytic {r['analytic_flops_per_step']:.3e}), {r['bytes_accessed_per_chip']:.3e} bytes/chip"
        ),
        "collectives: "
        + (", ".join(f"{k} ×{v['count']} {v['bytes'] / 2**20:.1f} MiB" for k, v in r["collectives"].items()) or "none"),
        f"roofline ≥ {r['roofline_s'] * 1e3:.2f} ms/step ({r['roofline_bound']}-bound), MFU ≤ {r['mfu_at_roofline']:.1%}",
    ]
    if r.get("flops_scan_undercount"):
        lines.insert(
            -1, "compiled flops count the scanned layer body once (XLA cost analysis): roofline uses the analytic"
        )
    return "\n".join(lines)


@errors.cli
def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    report = compile_report(_CONFIG.value, _TOPOLOGY.value, _STEP.value, hlo_path=_HLO.value)
    print(format_report(report))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(report, f, indent=1)


def parse_flags(argv):
    """absl's parser; a flag or config error is one line (exit 2). Not bitjax.main's: that defines --config too."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        lines = [l.strip() for l in str(e).splitlines() if l.strip()]
        errors.report(errors.UserError(re.sub(r"^\w+(Error|Exception): ", "", lines[-1]) if lines else str(e)))
    except KeyError as e:
        errors.report(errors.UserError(f"unknown config field {e.args[0] if e.args else e}"))
    except (AttributeError, TypeError, ValueError) as e:
        errors.report(e)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
