"""Bring an HF checkpoint directory into bitjax as a run: a workdir with a step-0 checkpoint.

    python -m bitjax.import_hf path/to/hf_dir --workdir runs/imported [--config configs/transformer.py \\
        --config.data.name=text_files --config.data.paths=notes.md]
    python -m bitjax.sample --workdir runs/imported --prompt "def "
    python -m bitjax.main --config configs/transformer.py:quant=b158 --workdir runs/ft \\
        --config.init_from=runs/imported --config.model.<fields as imported>

HF BitNetForCausalLM (packed offline, bitlinear or autobitlinear, or online) → b158 with sub-norms;
LlamaForCausalLM → fp (bitjax.export.hf.load_hf). The model fields come from the HF config and replace
the config's `model`; the rest (data, tokenizer, optimizer) is the given config's or the trainer
defaults. bitjax tokenizes with its own tokenizers (byte / sentencepiece), not the HF tokenizer, so the
HF vocabulary must cover the data config's tokenizer. Needs `pip install 'bitjax[hf]'`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from bitjax import errors
from bitjax.run import mesh as mesh_lib


def import_hf(hf_dir: str, workdir: str, config: ConfigDict | None = None) -> ConfigDict:
    """Write `workdir`/checkpoints/0 holding the HF model's parameters and a fresh optimizer state.

    Returns the run config stored with it (config.model from the HF config.json). Refuses a workdir
    that already holds checkpoints (nothing there is overwritten). The data config's tokenizer is
    stored with the run (a sentencepiece one is trained on its corpus if not cached yet).
    """
    from bitjax import config as config_lib
    from bitjax.data import pipeline
    from bitjax.export.hf import load_hf
    from bitjax.run import checkpoint as ckpt_lib
    from bitjax.run import config as run_config
    from bitjax.run import plan as plan_lib
    from bitjax.train import optim

    model_cfg, model = load_hf(hf_dir)
    config = ConfigDict(config_lib.to_dict(config)) if config is not None else run_config.trainer_config()
    config.model = model_cfg
    config.mesh = ConfigDict(dict(data=1, fsdp=1, tensor=1))
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    with errors.as_user_errors():
        run_config.validate(config, mesh)
        tokenizer = pipeline.get_tokenizer(run_config.data_config(config))
        plan = plan_lib.resolve(config, tokenizer, mesh=mesh)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
    if ckpt.latest_step() is not None:
        ckpt.close()
        raise FileExistsError(f"{workdir} already holds checkpoints; import into an empty workdir")
    params = jax.device_put(nnx.to_pure_dict(nnx.state(model)), plan.param_shardings)
    tx, _ = optim.make_optimizer(plan.config.optim, plan.config.total_steps)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "skipped": jnp.zeros((), jnp.int32),
    }
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


def main(argv):
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:  # orbax logs every checkpoint step at INFO (as bitjax.main)
        logging.set_verbosity(logging.WARNING)
    if len(argv) != 2:
        raise SystemExit("usage: python -m bitjax.import_hf HF_DIR --workdir W [--config FILE ...]")
    config = flags.FLAGS["config"].value if flags.FLAGS["config"].present else None
    cfg = import_hf(argv[1], flags.FLAGS.workdir, config)
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
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
