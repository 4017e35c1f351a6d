"""Score networks. Importing this package registers every architecture by config name."""
from scoresde_jax.models.utils import (
    get_model,
    get_model_fn,
    get_score_fn,
    init_model,
    model_fn_to_score_fn,
    register_model,
    registered_models,
)
