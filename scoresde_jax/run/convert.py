"""Importing an official score_sde / score_sde_pytorch checkpoint, given its config.

`import_checkpoint` writes a whole run directory (an orbax snapshot of a `TrainState` with
the EMA weights as `ema_params` and the raw weights as `params`, plus `config.json`), so that
`main.py --mode eval` / `--mode sample` run on an official checkpoint directly. The
conversion itself is `scoresde_jax.convert`; this module builds its network and input
shape from the config.

Usage:
  python -m scoresde_jax.run.convert --config configs/ve/cifar10_ncsnpp_continuous.py \
      --checkpoint checkpoint_24.pth --workdir runs/ve_cifar10_ncsnpp_continuous --ckpt 24
  python -m scoresde_jax.run.convert --config CONFIG --checkpoint FILE \
      --output params.msgpack [--no-ema]      # the parameters only, as a flax msgpack file
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import checkpoints, convert, errors, losses
from scoresde_jax.run import networks, setup, train


def read_checkpoint(config, checkpoint_path: str):
  """(EMA params, raw params, stored step or None) of an official checkpoint of `config`.

  See `scoresde_jax.convert.read_checkpoint`; the network and its input shape come from
  `config.model` and `config.data`.

  Raises:
    errors.CheckpointError: no file at `checkpoint_path`, an unsafe pickle, not a checkpoint,
      or one that does not fit the network of `config`.
  """
  if not os.path.isfile(checkpoint_path):
    raise errors.CheckpointNotFoundError(f'No checkpoint at {checkpoint_path!r}.')
  model = networks.get_model(config)
  size = int(config.data.image_size)
  try:
    return convert.read_checkpoint(checkpoint_path, model,
                                   (size, size, int(config.data.num_channels)))
  except errors.UserError:
    raise
  except ValueError as e:  # the converter's checks of the file against the network
    raise errors.CheckpointError(f'{checkpoint_path} does not fit the network of the config '
                                 f'({describe_network(config)}): {e}') from e


def describe_network(config) -> str:
  """The config keys that decide a network's parameter shapes, as one line."""
  m, d = config.model, config.data
  keys = [f'model.name={m.name}']
  keys += [f'model.{k}={m[k]}' for k in ('nf', 'ch_mult', 'num_res_blocks', 'attn_resolutions',
                                         'conditional') if k in m]
  keys += [f'data.image_size={d.image_size}', f'data.num_channels={d.num_channels}']
  return ', '.join(keys)


def check_params(params, template_params, source: str):
  """Raises errors.CheckpointError naming the first parameters of `params` (from `source`)
  that do not fit `template_params` (the config's network, arrays or shape structs)."""
  try:
    convert.check_tree(params, template_params)
  except ValueError as e:
    raise errors.CheckpointError(f'{source} does not fit the network of the config: {e}') from e


def import_checkpoint(config, checkpoint_path: str, workdir: str, step: int | None = None,
                      rng=None) -> losses.TrainState:
  """Imports an official checkpoint into a run directory of this project.

  Afterwards `main.py --mode eval` / `--mode sample` with the same config and `workdir`
  use it like a snapshot of our own training: `WORKDIR/checkpoints/<step>/` holds a full
  `losses.TrainState` and `WORKDIR/config.json` the config.

  Args:
    config: the ConfigDict the checkpoint was trained with (e.g.
      `configs.load_config('configs/ve/cifar10_ncsnpp_continuous.py')`).
    checkpoint_path: score_sde_pytorch `.pth` or original score_sde (JAX) msgpack file.
    workdir: run directory to write (created if needed). One that already holds a run of
      another config is refused (`errors.WorkdirConfigMismatch`).
    step: the step to file the snapshot under. Default: the step stored in the checkpoint
      (0 if it records none). Evaluation reads checkpoint index n at step
      n * config.training.snapshot_freq, so pass that to evaluate it as index n.
    rng: PRNG key of the state's `rng` (training resumed from the import); default
      PRNGKey(config.seed).

  Returns:
    The saved `losses.TrainState`: `ema_params` are the checkpoint's EMA weights (what
    evaluation and sampling use), `params` its raw weights, `opt_state` a fresh Adam
    state (the official optimizer moments are not imported, so resumed training restarts
    the learning-rate warmup).

  Raises:
    errors.CheckpointError: no usable checkpoint at `checkpoint_path` (see
      `read_checkpoint`), or `workdir` already holds a snapshot at `step`.
  """
  ema, raw, stored_step = read_checkpoint(config, checkpoint_path)
  if step is None:
    step = 0 if stored_step is None else stored_step
  step = int(step)
  if step < 0:
    raise errors.ConfigError(f'step must be >= 0; got {step}.')
  if rng is None:
    rng = jax.random.PRNGKey(config.get('seed', 42))
  # The state a run of this config starts from, abstractly (shapes and dtypes only: running
  # the initializers eagerly would cost tens of seconds and its values are all replaced).
  template = jax.eval_shape(lambda key: setup.create_train_state(config, key)[2], rng)
  cast = lambda tree: jax.tree.map(lambda a, t: jnp.asarray(a, t.dtype), tree, template.params)
  ema, raw = cast(ema), cast(raw)
  optimizer = setup.get_optimizer(config)
  # One compiled call instead of hundreds of eager ones (fresh optimizer state, EMA copy).
  state = jax.jit(lambda p, key: losses.init_train_state(p, optimizer, key))(raw, rng)
  state = state.replace(step=jnp.asarray(step, template.step.dtype), ema_params=ema)
  if jax.tree.structure(state) != jax.tree.structure(template):
    raise ValueError('Internal error: the imported state does not have the structure of '
                     'setup.create_train_state; please report it.')
  os.makedirs(workdir, exist_ok=True)
  train.check_workdir_config(workdir, config)
  ckpts = checkpoints.RunCheckpoints(workdir)
  try:
    if step in ckpts.snapshot_steps():
      raise errors.CheckpointError(f'{workdir!r} already holds a snapshot at step {step}; '
                                   'choose another --step or a new --workdir.')
    ckpts.save(state, snapshot=True)
    ckpts.wait()
  finally:
    ckpts.close()
  return state


def load_config_file(path: str):
  """The config of a config file; configs inside a checkout's configs/ load with their defaults."""
  if not os.path.isfile(path):
    raise errors.ConfigError(f'Config file not found: {path!r}.')
  # The configs import `configs.default_*_configs`: make the checkout that holds the file
  # importable, then use its loader (which checks the file).
  directory = os.path.dirname(os.path.abspath(path))
  while os.path.dirname(directory) != directory:
    if (os.path.basename(directory) == 'configs'
        and os.path.isfile(os.path.join(directory, '__init__.py'))):
      root = os.path.dirname(directory)
      if root not in sys.path:
        sys.path.insert(0, root)
      from configs import load_config  # pylint: disable=import-outside-toplevel
      return load_config(path)
    directory = os.path.dirname(directory)
  spec = importlib.util.spec_from_file_location('_scoresde_config', path)
  if spec is None or spec.loader is None:
    raise errors.ConfigError(f'Cannot load config file {path!r} (not a Python file?).')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise errors.ConfigError(f'Config file {path!r} defines no get_config() function.')
  return module.get_config()


_USAGE = """
  import into a run directory (then main.py --mode eval / sample on it):
    python -m scoresde_jax.run.convert --config configs/ve/cifar10_ncsnpp_continuous.py \\
        --checkpoint checkpoint_24.pth --workdir runs/ve_cifar10_ncsnpp_continuous --ckpt 24
  write only the parameters (flax msgpack):
    python -m scoresde_jax.run.convert --config CONFIG --checkpoint FILE --output params.msgpack
"""


def main(argv=None):
  parser = argparse.ArgumentParser(
      description='Import an official score_sde (JAX msgpack) or score_sde_pytorch (.pth) '
      'checkpoint.', epilog=_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', required=True, help='config file the checkpoint was trained '
                      'with (configs/...py)')
  parser.add_argument('--checkpoint', required=True, help='.pth (PyTorch) or JAX checkpoint_<n>')
  out = parser.add_mutually_exclusive_group(required=True)
  out.add_argument('--workdir', help='run directory to import into (checkpoints/<step>/, '
                   'config.json)')
  out.add_argument('--output', help='write only the parameters to this msgpack file')
  at = parser.add_mutually_exclusive_group()
  at.add_argument('--step', type=int, help='step to file the snapshot under (default: the '
                  "checkpoint's stored step, else 0)")
  at.add_argument('--ckpt', type=int, help='checkpoint index n (as in checkpoint_<n>): files '
                  'it at step n * training.snapshot_freq, what eval.begin_ckpt=n reads')
  parser.add_argument('--no-ema', action='store_true', help='with --output: raw instead of EMA '
                      'weights')
  args = parser.parse_args(argv)
  if args.output is not None and (args.step is not None or args.ckpt is not None):
    parser.error('--step/--ckpt apply to --workdir imports only.')
  if args.output is None and args.no_ema:
    parser.error('--no-ema applies to --output only (an import keeps both weight sets).')
  try:
    config = load_config_file(args.config)
    if args.output is not None:
      ema, raw, _ = read_checkpoint(config, args.checkpoint)
      params = raw if args.no_ema else ema
      with open(args.output, 'wb') as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
      print(f'Wrote {args.output}')
      return
    step = args.step
    if args.ckpt is not None:
      step = args.ckpt * int(config.training.snapshot_freq)
    state = import_checkpoint(config, args.checkpoint, args.workdir, step=step)
  except (errors.UserError, FileNotFoundError) as e:  # FileNotFoundError: --output's folder
    parser.exit(2, f'error: {e}\n')
  step = int(state.step)
  freq = int(config.training.snapshot_freq)
  print(f'Imported {args.checkpoint} into {args.workdir} at step {step} '
        '(ema_params: the EMA weights; params: the raw weights).')
  hint = (f' --config.eval.begin_ckpt={step // freq} --config.eval.end_ckpt={step // freq}'
          if step % freq == 0 else
          f'  (step {step} is not a multiple of training.snapshot_freq={freq}; re-import '
          'with --ckpt N to evaluate it as checkpoint N)')
  print(f'Sample:   python main.py --mode sample --config {args.config} --workdir {args.workdir}')
  print(f'Evaluate: python main.py --mode eval --config {args.config} --workdir {args.workdir}'
        f'{hint}')


if __name__ == '__main__':
  main()
