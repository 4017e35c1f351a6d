"""Your own images, VE SDE: a small NCSN++ (continuous) on a folder of PNG / JPEG files, CPU-sized.

Images: every .png / .jpg / .jpeg under data.path; in one sub-folder per class (labels: the
sorted sub-folder names) or all directly in it (unlabelled). Each is cropped to its central
square and resized to 32x32 (PIL bicubic, antialiased); smaller images are refused unless
data.upscale. About 10% of the files (by a hash of their relative path) form the eval split.

    python main.py --mode train --config configs/ve/folder_example.py \\
        --config.data.path=/path/to/images --workdir runs/my_images
    python main.py --mode fid_stats --config configs/ve/folder_example.py \\
        --config.data.path=/path/to/images --workdir runs/my_images

Gray images: add --config.data.num_channels=1 (a folder mixing gray and color is refused).
"""
from configs.default_digits_configs import get_default_configs
from configs.default_models import ncsnpp, ve_sde


def get_config():
  config = ve_sde(get_default_configs(), continuous=True)

  data = config.data
  data.dataset = 'FOLDER'
  data.path = ''  # required: --config.data.path=/path/to/images
  data.image_size = 32
  data.num_channels = 3
  data.random_flip = True
  data.upscale = False

  evaluate = config.eval
  evaluate.batch_size = 64
  evaluate.num_samples = 256
  # FID needs the folder's reference statistics: make them with --mode fid_stats (above), then
  # evaluate with --config.eval.enable_sampling=True.
  evaluate.enable_sampling = False

  # NCSN++ (FIR resampling, input pyramid) at three resolutions 32..8, narrow enough for a CPU:
  # about 1.3 s a step at batch 16 on 2 cores (XLA:CPU); raise model.nf and training.batch_size
  # on an accelerator.
  model = ncsnpp(config).model
  model.sigma_max = 50.  # CIFAR-10's, for 32x32 natural images (Song & Ermon 2020, technique 1)
  model.scale_by_sigma = True
  model.ema_rate = 0.999
  model.nf = 16
  model.ch_mult = (1, 2, 2)
  model.num_res_blocks = 1
  model.attn_resolutions = (8,)
  model.fourier_scale = 16
  model.embedding_type = 'fourier'

  training = config.training
  training.batch_size = 16
  training.n_iters = 4000
  training.snapshot_freq = 1000
  return config
