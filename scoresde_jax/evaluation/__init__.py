"""Sample-quality evaluation: the TF 2015-12-05 Inception-v3 in Flax, FID / IS / KID.

  variables = weights.load_inception()            # pytorch-fid's .pth, converted, cached
  feats = inception.compute_features(variables, images)   # [B,H,W,3] in [0,255]
  stats = fid.compute_statistics(batches, variables, path='stats.npz',
                                 preprocessing='pytorch_fid')   # or 'tf', 'clean_fid
  metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  metrics.inception_score(logits); metrics.kernel_inception_distance(act1, act2)

Preprocessing (`inception.PREPROCESSING`): the resize to 299x299 and scaling of pytorch-fid
('pytorch_fid', the default), of the TF graph itself ('tf') or of clean-fid ('clean_fid');
statistics files record theirs (`metrics.check_same_preprocessing`).

Command line: `python -m scoresde_jax.evaluation.fid A B [--preprocessing tf]` (folders or
.npz files).
"""
from scoresde_jax.evaluation import metrics
from scoresde_jax.evaluation.metrics import (
    activation_statistics,
    fid_from_activations,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    load_statistics,
    save_statistics,
)
from scoresde_jax.evaluation.weights import load_inception
