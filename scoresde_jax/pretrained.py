"""`scoresde_jax.pretrained.load(path, config=None)`: a ready score model from a run directory,
an export folder, an official `.pth` / JAX checkpoint, or a diffusers NCSN++ folder.

The public name of `scoresde_jax.run.pretrained` (which reads configs, so it lives in the
run layer); see there.
"""
from scoresde_jax.run.pretrained import Pretrained, export, load

__all__ = ['Pretrained', 'export', 'load']
