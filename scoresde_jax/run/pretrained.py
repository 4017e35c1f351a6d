"""One call from a trained network on disk to a ready score model.

  model = pretrained.load('checkpoint_24.pth', 'configs/ve/cifar10_ncsnpp_continuous.py')
  sampler = model.sampler(16)
  samples, nfe = sampler(jax.random.PRNGKey(0), model.score_fn)
  images = model.inverse_scaler(samples)
  # Class-conditional models (model.num_classes > 0): class 3, classifier-free guidance 2.
  samples, nfe = sampler(jax.random.PRNGKey(0), model.guided_score_fn(3, guidance_scale=2.0))

`load` takes any of: a run directory of this project (its `config.json` and orbax snapshots),
an export folder written by `--mode export` (`config.json` + safetensors), a score_sde_pytorch
`.pth` file or an original score_sde (JAX) `checkpoint_<n>` file (both need the config they
were trained with: the files hold none; the README's table names it), or a diffusers
`UNet2DModel` folder of the Hugging Face Hub's NCSN++ weights (its config is derived from
`config.json`). `export` writes the export folder.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Callable, Mapping

import flax.traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scoresde_jax import checkpoints, errors, files, sde_lib, torch_pickle
from scoresde_jax.run import convert, data, loop, networks, setup

log = logging.getLogger(__name__)

CONFIG_FILE = 'config.json'
EMA_FILE = 'ema_params.safetensors'
RAW_FILE = 'params.safetensors'


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """A trained score network with everything sampling and likelihoods need.

  Attributes:
    config: the run's ConfigDict (model, data, SDE, sampling settings).
    model: the Flax network.
    params: its EMA parameters, what the paper samples and evaluates with.
    raw_params: the live (non-averaged) parameters; `params` where the source holds one set.
    sde: the forward SDE of `config.training`.
    score_fn: `score_fn(x, t)` of `params`, batched, for every sampler and the likelihood
      (a class-conditional model's: config.sampling's classes and guidance scale; other
      ones from `guided_score_fn`).
    step: the training step the source records (None where it records none).
    source: 'run', 'export', 'pytorch', 'jax' or 'diffusers'.
  """
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  raw_params: Any
  sde: sde_lib.SDE
  score_fn: Callable
  step: int | None
  source: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    d = self.config.data
    return (int(d.image_size), int(d.image_size), int(d.num_channels))

  @property
  def scaler(self) -> Callable:
    """Images in [0, 1] -> the network's input range."""
    return data.get_data_scaler(self.config)

  @property
  def inverse_scaler(self) -> Callable:
    """The network's range -> images in [0, 1]."""
    return data.get_data_inverse_scaler(self.config)

  def sampler(self, num_samples: int, sharding=None, **overrides):
    """The config's sampler (`config.sampling`, with `overrides` such as `method='ode'` or
    `num_scales=100`) for `num_samples` images: `sampler(rng, self.score_fn)`."""
    return setup.get_sampler(self.config, (int(num_samples),) + self.image_shape, sharding,
                             overrides)

  def guided_score_fn(self, class_labels=None, guidance_scale: float | None = None):
    """A class-conditional model's score for `class_labels` (an int, or ints cycled over
    the batch; default config.sampling.class_label: -1 balanced classes) with classifier-free
    guidance `guidance_scale` (default config.sampling.guidance_scale), for any sampler:
    `model.sampler(16)(rng, model.guided_score_fn(3, guidance_scale=2.0))`. `score_fn` is
    this with the config's defaults. ConfigError for an unconditional model."""
    return setup.get_score_fn(self.config, self.sde, self.model, self.params, class_labels,
                              guidance_scale)


def _config_from(config) -> ml_collections.ConfigDict:
  if config is None or isinstance(config, ml_collections.ConfigDict):
    return config
  if isinstance(config, (str, os.PathLike)):
    return convert.load_config_file(os.fspath(config))
  raise errors.ConfigError(f'config must be a ConfigDict or the path of a config file; '
                           f'got {type(config).__name__}.')


def _read_config_json(directory: str) -> ml_collections.ConfigDict:
  with open(os.path.join(directory, CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def _ready(config, params, raw_params, step, source) -> Pretrained:
  sde = setup.get_sde(config)
  model = networks.get_model(config)
  return Pretrained(config=config, model=model, params=params, raw_params=raw_params, sde=sde,
                    score_fn=setup.get_score_fn(config, sde, model, params), step=step,
                    source=source)


def _load_run(directory: str, config, step: int | None) -> Pretrained:
  config = config or _read_config_json(directory)
  _, template = setup.model_and_template(config)
  if step is not None:
    state = checkpoints.restore_snapshot(directory, template, step)
  else:  # the newest of the snapshots and the preemption checkpoint
    dirs = [os.path.join(directory, d) for d in (checkpoints.SNAPSHOTS, checkpoints.PREEMPTION)]
    if not any(os.path.isdir(d) for d in dirs):
      raise errors.CheckpointNotFoundError(f'{directory!r} holds no checkpoints (no {dirs[0]} '
                                           f'or {dirs[1]}); train first with --mode train.')
    manager = checkpoints.RunCheckpoints(directory, asynchronous=False)
    try:
      state = manager.restore(template)
    finally:
      manager.close()
  return _ready(config, state.ema_params, state.params, int(state.step), 'run')


def _tree_of(flat: Mapping[str, np.ndarray]):
  return flax.traverse_util.unflatten_dict({tuple(k.split('/')): jnp.asarray(v)
                                            for k, v in flat.items()})


def _read_safetensors(path: str, template) -> Any:
  from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  try:
    tree = _tree_of(load_file(path))
  except (SafetensorError, OSError) as e:
    raise errors.CheckpointError(f'{path}: not a readable safetensors file ({e}).') from e
  convert.check_params(tree, template, path)
  return tree


def _load_export(directory: str, config) -> Pretrained:
  config = config or _read_config_json(directory)
  _, template = setup.model_and_template(config)
  ema = _read_safetensors(os.path.join(directory, EMA_FILE), template.params)
  raw_path = os.path.join(directory, RAW_FILE)
  raw = _read_safetensors(raw_path, template.params) if os.path.isfile(raw_path) else ema
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  with safe_open(os.path.join(directory, EMA_FILE), 'np') as f:
    step = (f.metadata() or {}).get('step')
  return _ready(config, ema, raw, None if step is None else int(step), 'export')


def _load_diffusers(directory: str, config) -> Pretrained:
  from scoresde_jax.run import hub  # pylint: disable=import-outside-toplevel
  config, params = hub.import_diffusers(directory, config)
  return _ready(config, params, params, None, 'diffusers')


def _is_diffusers_folder(directory: str) -> bool:
  if os.path.isfile(os.path.join(directory, 'model_index.json')):
    return True
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    try:
      return '_class_name' in json.load(f)
    except json.JSONDecodeError:
      return False


def load(path: str | os.PathLike, config=None, *, step: int | None = None) -> Pretrained:
  """A ready score model from a run directory, an export folder, an official checkpoint file
  or a diffusers model folder (see the module docstring).

  Args:
    path: the directory or file.
    config: a ConfigDict or the path of a config file (`configs/...py`). Required for
      official `.pth` and JAX checkpoint files; for directories it replaces the one stored
      there.
    step: for a run directory, the snapshot to load (default: the newest).

  Raises:
    errors.CheckpointNotFoundError: nothing at `path`, or a run directory without snapshots.
    errors.ConfigError: an official checkpoint file without `config`.
    errors.CheckpointError: a file or folder that is not a usable checkpoint of the config's
      network (the message names the first parameter that does not fit).
  """
  path = os.fspath(path)
  config = _config_from(config)
  if os.path.isdir(path):
    if _is_diffusers_folder(path):
      return _load_diffusers(path, config)
    if os.path.isfile(os.path.join(path, EMA_FILE)):
      return _load_export(path, config)
    if os.path.isfile(os.path.join(path, CONFIG_FILE)) or config is not None:
      return _load_run(path, config, step)
    raise errors.CheckpointError(
        f'{path!r} is neither a run directory (config.json + {checkpoints.SNAPSHOTS}/), an '
        f'export folder ({CONFIG_FILE} + {EMA_FILE}) nor a diffusers model folder.')
  if not os.path.exists(path):
    raise errors.CheckpointNotFoundError(f'Nothing at {path!r}: no run directory, export folder '
                                         'or checkpoint file.')
  if config is None:
    raise errors.ConfigError(
        f'{path} is an official checkpoint, which holds no config: pass the config it was '
        'trained with, e.g. load(path, "configs/ve/cifar10_ncsnpp_continuous.py") (the '
        "README's table of official checkpoints names each one's config).")
  ema, raw, stored_step = convert.read_checkpoint(config, path)
  source = 'pytorch' if torch_pickle.is_torch_file(path) else 'jax'
  return _ready(config, ema, raw, stored_step, source)


def export(pretrained: Pretrained, directory: str) -> dict[str, str]:
  """Writes `pretrained` as an export folder: `config.json` and its EMA and live parameters
  as safetensors (keys: the parameter paths joined by '/'), which `load` reads back and
  other frameworks read without this project. Each file is written atomically.

  Returns {'config', 'ema_params', 'params'}: the paths written.
  """
  from safetensors.numpy import save  # pylint: disable=import-outside-toplevel
  os.makedirs(directory, exist_ok=True)
  metadata = {'format': 'scoresde_jax', 'model': str(pretrained.config.model.name)}
  if pretrained.step is not None:
    metadata['step'] = str(pretrained.step)
  written = {}
  for name, params in ((EMA_FILE, pretrained.params), (RAW_FILE, pretrained.raw_params)):
    flat = {'/'.join(k): np.ascontiguousarray(jax.device_get(v)) for k, v in
            flax.traverse_util.flatten_dict(flax.core.unfreeze(params)).items()}
    path = os.path.join(directory, name)
    files.write_atomic(path, save(flat, metadata=metadata))
    written[name.split('.')[0]] = path
  written['config'] = os.path.join(directory, CONFIG_FILE)
  files.write_json(written['config'], loop.config_json(pretrained.config))
  return written


def export_run(config, workdir: str) -> dict[str, str]:
  """`--mode export`: the newest checkpoint of the run in `workdir` as an export folder,
  WORKDIR/export/step_<n>/. Returns the paths written (see `export`)."""
  model = load(workdir, config)
  written = export(model, os.path.join(workdir, 'export', f'step_{model.step}'))
  log.info('Exported step %d of %s: %s', model.step, workdir, ', '.join(written.values()))
  return written
