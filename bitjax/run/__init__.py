"""A run: its config resolved once (plan.py), its checkpoints (checkpoint.py), mesh and axis rules (mesh.py)
and config fields (config.py). Everything that reads a workdir (sample, eval, export, ptq, a distillation
teacher, init_from) goes through `bitjax.run.plan.restore`; training (bitjax.train) is one user of it."""
