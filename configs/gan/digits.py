"""A small DCGAN on scikit-learn's digits (8x8, no download), and its DDLS sampling.

    python main.py --mode train_gan --config configs/gan/digits.py --workdir runs/digits_gan
    python main.py --mode sample_gan --config configs/gan/digits.py --workdir runs/digits_gan

`gan.*`: the networks (models.gan), their Adam optimizers and the schedule of the run;
`ddls.*`: the Langevin chain in G's latent space on E(z) = |z|^2 / 2 - d(G(z)) (Che et al.
2020) that --mode sample_gan runs. A GAN config has no score-model sections: --mode train
refuses it.
"""
import ml_collections

from configs import default_configs


def get_config():
  config = ml_collections.ConfigDict()
  # Every key the data readers know, then the digits' values.
  config.data = data = default_configs.get_default_configs().data
  data.dataset = 'DIGITS'
  data.image_size = 8
  data.num_channels = 1
  data.random_flip = False  # Digits are not mirror-symmetric.
  data.centered = True  # [-1, 1], the generator's tanh range

  config.gan = ml_collections.ConfigDict(dict(
      latent_dim=32,
      # Channels at 8x8; the 4x4 layers have twice as many.
      g_features=32, d_features=32,
      # DCGAN's Adam (beta1 = 0.5).
      lr_g=2e-4, lr_d=2e-4, beta1=0.5, beta2=0.999,
      # R1 penalty (gamma / 2) E|grad d(x_real)|^2; 0 turns it off.
      r1_gamma=0.1,
      ema_rate=0.999,
      batch_size=64, n_iters=5000, n_jitted_steps=1,
      log_freq=100, snapshot_freq=2500, snapshot_freq_for_preemption=500))

  config.ddls = ml_collections.ConfigDict(dict(
      # Langevin moves z <- z - (eps / 2) grad E(z) + sqrt(eps) n, eps = step_size, multiplied
      # by `decay` every `decay_every` moves (0: constant).
      n_steps=100, step_size=0.01, decay=1.0, decay_every=0,
      # Steps of the chain kept in the samples file and drawn in chain.png (0: G(z0)).
      record_steps=(0, 10, 50, 100),
      # Chains per compiled call (a multiple of the devices); G's raw or EMA parameters (D
      # was trained against the raw ones, so its logit corrects those).
      batch_size=256, use_ema=False))

  config.seed = 42
  return config
