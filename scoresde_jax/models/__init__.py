"""Score networks, registered by architecture name (`registered_models`, `get_architecture`).

Networks take typed fields; `scoresde_jax.run.networks` builds them from a config.
"""
from scoresde_jax.models.utils import (
    ScoreFn,
    class_count,
    cycle_labels,
    get_architecture,
    get_model_fn,
    get_score_fn,
    guided_score,
    init_params,
    model_fn_to_score_fn,
    register_model,
    registered_models,
)
