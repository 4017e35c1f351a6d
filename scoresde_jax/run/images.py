"""Image grids of samples and of the diffusion process, saved as PNG."""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from scoresde_jax import files


def to_uint8(images) -> np.ndarray:
  """[..., H, W, C] floats in [0, 1] -> uint8 (clipped, rounded as torchvision does)."""
  return np.clip(np.asarray(images, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def make_grid(images, nrow: int | None = None, padding: int = 2, pad_value: int = 255) -> np.ndarray:
  """Tiles `images: [B, H, W, C]` in [0, 1] into one uint8 image, `nrow` per row."""
  images = to_uint8(images)
  b, h, w, c = images.shape
  nrow = nrow or int(math.ceil(math.sqrt(b)))
  ncol = int(math.ceil(b / nrow))
  grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value,
                 np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, nrow)
    y, x = padding + r * (h + padding), padding + q * (w + padding)
    grid[y:y + h, x:x + w] = image
  return grid


def save_grid(images, path: str, nrow: int | None = None, scale: int = 1):
  """Writes a grid PNG atomically (a killed run never leaves a truncated file)."""
  grid = make_grid(images, nrow)
  if grid.shape[-1] == 1:
    grid = grid[..., 0]
  image = Image.fromarray(grid)
  if scale > 1:
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  files.write_atomic(path, buffer.getvalue())


def save_pngs(pixels: np.ndarray, folder: str):
  """Writes `pixels: uint8 [N, H, W, C]` as FOLDER/000000.png, ... (each atomically), the
  layout the FID command and other evaluators read."""
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(np.asarray(pixels)):
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format='PNG')
    files.write_atomic(os.path.join(folder, f'{i:06d}.png'), buffer.getvalue())


def trajectory_rows(trajectory, num_samples: int = 8) -> tuple[np.ndarray, int]:
  """`trajectory: [T, B, H, W, C]` -> (images in grid order, images per row): one row per
  sample (the first `num_samples`), noise (left) to image."""
  traj = np.asarray(trajectory)[:, :num_samples]
  return np.transpose(traj, (1, 0, 2, 3, 4)).reshape((-1,) + traj.shape[2:]), traj.shape[0]


def save_trajectory(trajectory, path: str, num_samples: int = 8, scale: int = 1):
  """`trajectory: [T, B, H, W, C]` in [0, 1] as a grid PNG (see `trajectory_rows`)."""
  rows, nrow = trajectory_rows(trajectory, num_samples)
  save_grid(rows, path, nrow=nrow, scale=scale)
