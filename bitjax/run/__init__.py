"""A run's floor below the trainer: its config fields (config.py), mesh and axis rules (mesh.py), checkpoints
(checkpoint.py). Training is one user of them; the tools that read runs are the others."""
