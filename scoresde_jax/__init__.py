"""scoresde_jax: score-based generative modeling through SDEs, in JAX."""

__version__ = '0.1.0'
