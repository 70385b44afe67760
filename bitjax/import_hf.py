"""Bring an HF checkpoint directory into bitjax as a run: a workdir with a step-0 checkpoint.

    python -m bitjax.import_hf path/to/hf_dir --workdir runs/imported [--config configs/transformer.py \\
        --config.data.name=text_files --config.data.paths=notes.md]
    python -m bitjax.sample --workdir runs/imported --prompt "def "
    python -m bitjax.main --config configs/transformer.py:quant=b158 --workdir runs/ft \\
        --config.init_from=runs/imported --config.model.<fields as imported>

HF BitNetForCausalLM (packed offline, bitlinear or autobitlinear, or online) → b158 with sub-norms;
LlamaForCausalLM → fp (bitjax.export.hf.load_hf). The model fields come from the HF config and replace
the config's `model`; the rest (data, optimizer) is the given config's or the trainer defaults. A
directory with a tokenizer.json keeps it (data.tokenizer='hf', copied into the workdir; off with
--nokeep_tokenizer); else the config's tokenizer, which the HF vocabulary must cover. Needs
`pip install 'bitjax[hf]'`.
"""

from __future__ import annotations

import os

import jax
from flax import nnx
from ml_collections import ConfigDict

from bitjax import errors
from bitjax.run import mesh as mesh_lib


def check_source(hf_dir: str) -> ConfigDict:
    """config.model of the HF directory `hf_dir`, after checking everything the import will read.

    UserError (one line naming the file) for: a missing SOURCE, a file that is not a directory, no or
    unreadable config.json, an architecture bitjax does not import, no *.safetensors, a damaged
    (e.g. truncated) safetensors file, and a tensor missing or of a shape other than the config's
    model needs (read from the safetensors headers against an abstract model: nothing is built or
    loaded yet).
    """
    import glob
    import json

    from bitjax import models
    from bitjax.export import hf as hf_lib

    if not os.path.exists(hf_dir):
        raise errors.UserError(f"SOURCE {hf_dir} does not exist: give an HF checkpoint directory")
    if not os.path.isdir(hf_dir):
        raise errors.UserError(f"SOURCE {hf_dir} is a file, not an HF checkpoint directory or a .gguf file")
    cfg_path = os.path.join(hf_dir, "config.json")
    try:
        with open(cfg_path) as f:
            hf_cfg = json.load(f)
    except FileNotFoundError:
        raise errors.UserError(f"{hf_dir} has no config.json: not an HF checkpoint directory") from None
    except (OSError, ValueError) as e:
        raise errors.UserError(f"{cfg_path} cannot be read as JSON ({e})") from e
    if not isinstance(hf_cfg, dict):
        raise errors.UserError(f"{cfg_path} holds a JSON {type(hf_cfg).__name__}, not an HF config object")
    with errors.as_user_errors():
        try:
            cfg = hf_lib.model_config_from_hf(hf_cfg)
        except KeyError as e:
            raise ValueError(f"{cfg_path} has no {e.args[0]!r}, which bitjax needs") from e
    files = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
    if not files:
        raise errors.UserError(f"no *.safetensors in {hf_dir} (pytorch_model.bin checkpoints are not read)")
    safe_open = hf_lib.require("safetensors", "hf").safe_open
    shapes = {}
    for path in files:
        try:
            with safe_open(path, "np") as f:
                keys = f.keys()
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in keys})
        except Exception as e:  # safetensors' SafetensorError (a bare Exception) or an OSError
            raise errors.UserError(f"{path} is not a readable safetensors file ({errors.one_line(e)})") from e
        size = os.path.getsize(path)
        with open(path, "rb") as f:  # a file cut short after its header: safe_open maps it lazily
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if size < 8 + header_len + end:
            raise errors.UserError(f"{path} is truncated: {size} bytes, its header needs {8 + header_len + end}")
    abstract = nnx.eval_shape(lambda: models.get_model(cfg.name)(cfg, rngs=nnx.Rngs(0)))
    names = models.hf_param_names(abstract)
    offline = bool(hf_lib.quantization(hf_cfg))
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        name, want = names[".".join(map(str, path))], tuple(var.get_value().shape)
        if name not in shapes:
            raise errors.UserError(f"{hf_dir} has no tensor {name!r}, which its config.json's model needs")
        got = shapes[name]
        if path[-1] == "kernel":
            want = want[::-1]  # HF stores torch's (out, in)
            if offline and len(got) == 2 and got[0] * 4 == want[0]:  # packed 2-bit: (out/4, in)
                got = (want[0], got[1])
        if got != want:
            raise errors.UserError(f"{hf_dir}: tensor {name!r} has shape {got}, its config.json's model needs {want}")
    return cfg


def check_workdir(workdir: str) -> None:
    """UserError if `workdir` is a file, in use by a live run (its LOCK), or already holds a run."""
    from bitjax.train import workdir as workdir_lib

    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise errors.UserError(f"--workdir {workdir} is a file, not a directory; choose another --workdir")
    if os.path.exists(os.path.join(workdir, workdir_lib.LOCK_NAME)):
        with workdir_lib.Lock(workdir):  # refuses while a live run holds it; a stale one is let go
            pass
    ckpts = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpts) and os.listdir(ckpts):
        raise errors.UserError(
            f"{workdir} already holds a run ({ckpts} is not empty); import into a new --workdir "
            f"(nothing was changed on disk)"
        )


def import_hf(
    hf_dir: str, workdir: str, config: ConfigDict | None = None, *, keep_tokenizer: bool = True
) -> ConfigDict:
    """Write `workdir`/checkpoints/0 holding the HF model's parameters and a fresh optimizer state.

    Returns the run config stored with it (config.model from the HF config.json). The source is
    checked (:func:`check_source`) and the workdir too (:func:`check_workdir`: a live run's LOCK or an
    existing run is refused, never overwritten) before anything is written; the import holds the
    workdir's LOCK while it writes, so a run started meanwhile is refused. The data config's
    tokenizer is stored with the run (a sentencepiece one is trained on its corpus if not cached yet).
    keep_tokenizer: an HF directory with a tokenizer.json keeps it (data.tokenizer='hf' with
    tokenizer_path=hf_dir), whatever tokenizer the config names; a tokenizer whose vocabulary the
    model's embedding does not cover is refused.
    """
    from bitjax import config as config_lib
    from bitjax.data import pipeline
    from bitjax.run import config as run_config
    from bitjax.run import plan as plan_lib
    from bitjax.train import workdir as workdir_lib

    if os.path.isfile(hf_dir) and hf_dir.endswith(".gguf"):  # via a temporary HF directory of it
        import tempfile

        from bitjax.import_gguf import gguf_to_hf

        check_workdir(workdir)
        with tempfile.TemporaryDirectory(prefix="bitjax-gguf-") as tmp:
            gguf_to_hf(hf_dir, tmp)
            return import_hf(tmp, workdir, config, keep_tokenizer=keep_tokenizer)
    model_cfg = check_source(hf_dir)
    check_workdir(workdir)
    config = ConfigDict(config_lib.to_dict(config)) if config is not None else run_config.trainer_config()
    config.model = model_cfg
    config.mesh = ConfigDict(dict(data=1, fsdp=1, tensor=1))
    if keep_tokenizer and os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
        config.data.tokenizer = "hf"
        config.data.tokenizer_path = os.path.abspath(hf_dir)
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    with errors.as_user_errors():
        run_config.validate(config, mesh)
        tokenizer = pipeline.get_tokenizer(run_config.data_config(config))
        plan = plan_lib.resolve(config, tokenizer, mesh=mesh)
    workdir_lib.prepare(workdir)
    with workdir_lib.Lock(workdir):
        return _import_locked(hf_dir, workdir, plan, tokenizer)


def _import_locked(hf_dir: str, workdir: str, plan, tokenizer) -> ConfigDict:
    """The import proper, under the workdir's LOCK: load the weights, write step 0 and the tokenizer."""
    from bitjax import config as config_lib
    from bitjax.export.hf import load_hf
    from bitjax.run import checkpoint as ckpt_lib
    from bitjax.run import plan as plan_lib
    from bitjax.train import optim

    _, model = load_hf(hf_dir)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is not None:  # check_workdir saw none; a second import raced this one
        ckpt.close()
        raise errors.UserError(f"{workdir} already holds checkpoints; import into an empty workdir")
    params = jax.device_put(nnx.to_pure_dict(nnx.state(model)), plan.param_shardings)
    tx, _ = optim.make_optimizer(plan.config.optim, plan.config.total_steps)
    state = optim.train_state(tx, params)
    meta = {
        "config": config_lib.to_dict(plan.config),
        "tokenizer": plan_lib.tokenizer_meta(tokenizer),
        "quant_recipe": plan.quant_table,
        "imported_from": os.path.abspath(hf_dir),
    }
    plan_lib.store_tokenizer(workdir, tokenizer)
    ckpt.save(0, state, meta, force=True)
    ckpt.wait()
    ckpt.close()
    return plan.config


@errors.cli
def main(argv):
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO (as bitjax.main)
        logging.set_verbosity(logging.WARNING)
    if len(argv) != 2:
        raise errors.UserError("usage: python -m bitjax.import_hf HF_DIR --workdir W [--config FILE ...]")
    config = flags.FLAGS["config"].value if flags.FLAGS["config"].present else None
    cfg = import_hf(argv[1], flags.FLAGS.workdir, config, keep_tokenizer=flags.FLAGS.keep_tokenizer)
    print(
        f"imported {argv[1]} → {flags.FLAGS.workdir} (model {cfg.model.quant.method}, "
        f"{cfg.model.n_layers} layers, d_model {cfg.model.d_model}); sample with "
        f"python -m bitjax.sample --workdir {flags.FLAGS.workdir}"
    )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "run config (data, optimizer); its model is replaced")
    flags.DEFINE_string("workdir", None, "the bitjax workdir to create")
    flags.DEFINE_bool("keep_tokenizer", True, "use the HF directory's tokenizer.json (else the config's)")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
