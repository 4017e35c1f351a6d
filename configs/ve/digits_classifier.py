"""Time-dependent digit classifier for class-conditional sampling of the VE digits model.

The score model's config (configs/ve/digits.py: data, SDE, network) plus `classifier.*`, the
noise-conditional Wide-ResNet and its training (Song et al. 2021, App. I, at CPU size):

    python main.py --mode train_classifier --config configs/ve/digits_classifier.py \
        --workdir runs/digits_ve

writes WORKDIR/classifier/ (checkpoints, config.json) beside the score model's run.
"""
import ml_collections

from configs.ve.digits import get_config as get_score_config


def get_config():
  config = get_score_config()

  config.classifier = ml_collections.ConfigDict(dict(
      # WRN-10-2: one block per group, channels 32 / 64 / 128 (the paper: WRN-28-10).
      depth=10, width=2, base_channels=16, num_classes=10,
      # Fourier features of log(sigma): E frequencies, embedding of 4E units (the paper: 128).
      num_frequencies=32, fourier_scale=16.,
      # Adam with warmup and clipping, as the score models (losses.get_optimizer).
      lr=1e-3, warmup=100, grad_clip=1., weight_decay=0., ema_rate=0.99,
      batch_size=128, n_iters=2000,
      log_freq=100, eval_freq=500, snapshot_freq=1000, snapshot_freq_for_preemption=500,
      # Noise scales (VE sigma) at which the eval split's accuracy is logged.
      eval_sigmas=(0.01, 0.1, 0.3, 1.0, 3.0)))
  return config
