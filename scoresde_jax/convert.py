"""Parameters of the official score_sde checkpoints -> this project's Flax parameter trees.

Two sources:
  * score_sde_pytorch `.pth` files: `model` is a (DataParallel) state dict with keys
    `module.all_modules.{i}.{Sub_j}.{leaf}` in module-creation order plus a `sigmas`
    buffer; `ema.shadow_params` is a positional list aligned with the trainable parameters
    (so it lacks the fixed Fourier-feature `W`, which only the model state dict has).
  * the original JAX release: flax msgpack files holding the training `State`, parameters
    under `params_ema` and `optimizer.target`, already in our layout (same auto-names).

PyTorch modules are matched to Flax modules by creation order: the i-th top-level
PyTorch module with parameters is the i-th top-level Flax module with parameters (the
Flax order is recorded by tracing the network's `init`). Within a module the sub-module
names coincide (`GroupNorm_0`, `Conv_1`, `Dense_0`, `NIN_0`, `Conv2d_0`). Leaves:
conv weight OIHW -> kernel HWIO, Linear weight [out, in] -> kernel [in, out], GroupNorm
weight -> scale, `bias`/`W`/`b` unchanged, StyleGAN-style `Conv2d.weight` OIHW -> HWIO.

`import_checkpoint` writes a whole run directory (an orbax snapshot of a `TrainState` with
the EMA weights as `ema_params` and the raw weights as `params`, plus `config.json`), so that
`main.py --mode eval` / `--mode sample` run on an official checkpoint directly.

Usage:
  python -m scoresde_jax.convert --config configs/ve/cifar10_ncsnpp_continuous.py \
      --checkpoint checkpoint_24.pth --workdir runs/ve_cifar10_ncsnpp_continuous --ckpt 24
  python -m scoresde_jax.convert --config CONFIG --checkpoint FILE --output params.msgpack \
      [--no-ema]      # the parameters only, as a flax msgpack file
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
import struct
import sys
import zipfile
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

Params = dict

_ALL_MODULES = re.compile(r'^all_modules\.(\d+)\.(.+)$')
# The only top-level buffer of the reference networks; not a parameter.
_BUFFERS = ('sigmas',)


def _strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Drops DataParallel's `module.` prefix (if every key has it); values -> numpy."""
  keys = list(state_dict)
  strip = bool(keys) and all(k.startswith('module.') for k in keys)
  return {(k[len('module.'):] if strip else k): np.asarray(v) for k, v in state_dict.items()}


def _param_shapes(config):
  """(model, Flax parameter shapes, top-level module names in creation order)."""
  from scoresde_jax.models import utils as mutils  # registry; imports architectures lazily
  model = mutils.get_model(config)
  order: list[str] = []

  def record(next_fun, args, kwargs, context):
    # Direct children of the network have a one-element scope path, e.g. ('Conv_0',).
    path = context.module.scope.path if context.module.scope is not None else ()
    if len(path) == 1 and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  size = config.data.image_size
  x = jnp.zeros((1, size, size, config.data.num_channels), jnp.float32)
  labels = jnp.ones((1,), jnp.float32)

  def init():
    with nn.intercept_methods(record):
      return model.init({'params': jax.random.PRNGKey(0), 'dropout': jax.random.PRNGKey(1)},
                        x, labels, train=False)

  shapes = jax.eval_shape(init)['params']
  return model, shapes, [name for name in order if name in shapes]


def _convert_leaf(torch_leaf: str, value: np.ndarray, flax_node: Mapping[str, Any],
                  where: str) -> tuple[str, np.ndarray]:
  """Flax (leaf name, array) for a PyTorch leaf inside the Flax module `flax_node`."""
  if torch_leaf == 'weight':
    if 'kernel' in flax_node:  # nn.Conv / nn.Dense
      if value.ndim == 4:
        return 'kernel', value.transpose(2, 3, 1, 0)
      if value.ndim == 2:
        return 'kernel', value.T
    elif 'scale' in flax_node:  # GroupNorm
      return 'scale', value
    elif 'weight' in flax_node and value.ndim == 4:  # up_or_down_sampling.Conv2d
      return 'weight', value.transpose(2, 3, 1, 0)
    raise ValueError(f'Cannot map PyTorch weight {where} of shape {value.shape} onto Flax '
                     f'module with leaves {sorted(flax_node)}.')
  return torch_leaf, value


def torch_state_dict_to_params(state_dict: Mapping[str, Any], config) -> Params:
  """Flax params of `config`'s network from a score_sde_pytorch model state dict.

  Args:
    state_dict: name -> array (numpy or anything `np.asarray` takes), with or without the
      DataParallel `module.` prefix. The `sigmas` buffer is ignored, as are the
      per-block `Dense_0` layers PyTorch creates (but never uses) when
      `config.model.conditional` is False.
    config: the ConfigDict the checkpoint was trained with.
  Returns:
    nested dict of float32 jax arrays, the `params` collection of `get_model(config)`.
  Raises:
    ValueError: keys or shapes that do not fit the network built from `config`.
  """
  sd = _strip_prefix(state_dict)
  _, shapes, flax_order = _param_shapes(config)
  by_module: dict[int, dict[str, np.ndarray]] = {}
  for key, value in sd.items():
    if key in _BUFFERS:
      continue
    match = _ALL_MODULES.match(key)
    if not match:
      raise ValueError(f'Unexpected state-dict key {key!r}: expected all_modules.<i>.<name> '
                       '(is this a score_sde_pytorch ncsnpp/ddpm state dict?).')
    by_module.setdefault(int(match.group(1)), {})[match.group(2)] = value
  torch_order = sorted(by_module)
  if len(torch_order) != len(flax_order):
    raise ValueError(f'The state dict has {len(torch_order)} modules with parameters, the '
                     f'network built from this config has {len(flax_order)}: the config does '
                     'not match the checkpoint.')

  conditional = bool(config.model.conditional)
  params: dict[str, Any] = {}
  for index, flax_name in zip(torch_order, flax_order):
    flax_tree = shapes[flax_name]
    out: dict[str, Any] = {}
    for sub_key, value in by_module[index].items():
      parts = sub_key.split('.')
      where = f'all_modules.{index}.{sub_key}'
      node, target = flax_tree, out
      skip = False
      for depth, part in enumerate(parts[:-1]):
        if part not in node:
          if part == 'Dense_0' and depth == 0 and not conditional:
            skip = True  # PyTorch builds it for unconditional nets too; it is unused.
            break
          raise ValueError(f'{where}: Flax module {flax_name} has no sub-module {part!r} '
                           f'(has {sorted(node)}); the config does not match the checkpoint.')
        node = node[part]
        target = target.setdefault(part, {})
      if skip:
        continue
      leaf, array = _convert_leaf(parts[-1], np.asarray(value, np.float32), node, where)
      if leaf not in node or not hasattr(node[leaf], 'shape'):
        raise ValueError(f'{where}: Flax module {flax_name} has no parameter {leaf!r}.')
      if tuple(node[leaf].shape) != array.shape:
        raise ValueError(f'{where}: shape {array.shape} (after layout conversion) does not '
                         f'match {flax_name} {leaf} {tuple(node[leaf].shape)}.')
      target[leaf] = jnp.asarray(array)
    params[flax_name] = out

  missing = [jax.tree_util.keystr(path) for path, _ in
             jax.tree_util.tree_flatten_with_path(shapes)[0]
             if _get(params, path) is None]
  if missing:
    raise ValueError(f'Parameters missing from the state dict: {missing[:10]}'
                     f'{" ..." if len(missing) > 10 else ""}')
  return params


def _get(tree, path):
  for entry in path:
    if not isinstance(tree, dict) or entry.key not in tree:
      return None
    tree = tree[entry.key]
  return tree


def _is_fixed(key: str) -> bool:
  """Non-trainable entries of a stripped state dict: buffers and the Fourier `W`."""
  return key in _BUFFERS or re.fullmatch(r'all_modules\.\d+\.W', key) is not None


def ema_shadow_to_params(shadow_params: Sequence[Any], model_state_dict: Mapping[str, Any],
                         config) -> Params:
  """Flax params holding the EMA weights of a score_sde_pytorch checkpoint.

  Args:
    shadow_params: `checkpoint['ema']['shadow_params']`, the EMA copies of the trainable
      parameters in `model.parameters()` order (= state-dict order without buffers and the
      fixed Fourier `W`).
    model_state_dict: `checkpoint['model']`, which names the entries and supplies `W`.
    config: the ConfigDict the checkpoint was trained with.
  """
  sd = _strip_prefix(model_state_dict)
  trainable = [k for k in sd if not _is_fixed(k)]
  if len(trainable) != len(shadow_params):
    raise ValueError(f'EMA has {len(shadow_params)} shadow parameters but the model state '
                     f'dict has {len(trainable)} trainable entries.')
  merged = dict(sd)
  for key, shadow in zip(trainable, shadow_params):
    shadow = np.asarray(shadow)
    if shadow.shape != sd[key].shape:
      raise ValueError(f'EMA shadow parameter for {key} has shape {shadow.shape}, the model '
                       f'has {sd[key].shape}: the EMA list is not aligned with the model.')
    merged[key] = shadow
  return torch_state_dict_to_params(merged, config)


def _read_torch_checkpoint(path: str) -> tuple[dict[str, np.ndarray], int | None]:
  """(tensors flattened with '.', the top-level `step` or None) of a `.pth` file.

  The same restricted unpickler as `evaluation.weights.load_torch_state_dict` (no torch,
  nothing executed), keeping the object so that the integer `step` survives.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No checkpoint at {path!r}.')
  # Lazy: the reader lives with the Inception weights loader.
  from scoresde_jax.evaluation import weights  # pylint: disable=import-outside-toplevel
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as zf:
        obj = weights._load_zip(zf)  # pylint: disable=protected-access
    else:
      with open(path, 'rb') as f:
        obj = weights._load_legacy(f)  # pylint: disable=protected-access
  except weights.UnsafeCheckpointError:
    raise
  except (pickle.UnpicklingError, EOFError, KeyError, TypeError, IndexError, ValueError,
          struct.error) as e:
    raise ValueError(f'{path!r} is not a readable torch checkpoint: {e}') from e
  flat: dict[str, np.ndarray] = {}
  weights._flatten(obj, '', flat)  # pylint: disable=protected-access
  step = obj.get('step') if isinstance(obj, dict) else None
  return flat, _as_step(step)


def _as_step(value) -> int | None:
  """A stored step (int, numpy scalar or 0-d array) as int; None if there is none."""
  if value is None:
    return None
  try:
    return int(np.asarray(value).reshape(()))
  except (TypeError, ValueError):
    return None


def _torch_flat_to_params(flat: Mapping[str, np.ndarray], config, use_ema: bool,
                          path: str) -> Params:
  model_sd = {k[len('model.'):]: v for k, v in flat.items() if k.startswith('model.')}
  if not model_sd:  # a bare state dict
    if use_ema:
      raise ValueError(f'{path!r} is a bare state dict without EMA weights; '
                       'pass use_ema=False.')
    return torch_state_dict_to_params(flat, config)
  if not use_ema:
    return torch_state_dict_to_params(model_sd, config)
  prefix = 'ema.shadow_params.'
  shadow = {int(k[len(prefix):]): v for k, v in flat.items() if k.startswith(prefix)}
  if not shadow:
    raise ValueError(f'{path!r} has no ema.shadow_params; pass use_ema=False.')
  if sorted(shadow) != list(range(len(shadow))):
    raise ValueError(f'{path!r}: ema.shadow_params indices are not 0..{len(shadow) - 1}.')
  return ema_shadow_to_params([shadow[i] for i in range(len(shadow))], model_sd, config)


def torch_checkpoint_to_params(path: str, config, use_ema: bool = True) -> Params:
  """Flax params from a score_sde_pytorch `.pth` checkpoint file (EMA weights by default).

  Reads the file without torch and without unpickling arbitrary objects (only tensors,
  storages and builtin containers are accepted). Accepts a full training checkpoint
  (`model`, `ema`, `optimizer`, `step`) or a bare model state dict (then `use_ema` must
  be False).
  """
  flat, _ = _read_torch_checkpoint(path)
  return _torch_flat_to_params(flat, config, use_ema, path)


def _read_jax_state(path: str) -> dict:
  """The training `State` dict of an original score_sde (flax msgpack) checkpoint file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No checkpoint at {path!r}.')
  with open(path, 'rb') as f:
    try:
      state = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types on corrupt input
      raise ValueError(f'{path!r} is not a flax msgpack checkpoint: {e}') from e
  if not isinstance(state, dict):
    raise ValueError(f'{path!r} does not hold a training State dict.')
  return state


def _jax_state_to_params(state: Mapping[str, Any], path: str, use_ema: bool) -> Params:
  if use_ema:
    if 'params_ema' not in state:
      raise ValueError(f'{path!r} has no params_ema (keys: {sorted(state)}).')
    params = state['params_ema']
  else:
    target = state.get('optimizer', {})
    if not isinstance(target, dict) or 'target' not in target:
      raise ValueError(f'{path!r} has no optimizer.target (keys: {sorted(state)}).')
    params = target['target']
  # Some releases nest the tree under 'params' (a full variables dict); unwrap it.
  if isinstance(params, dict) and set(params) == {'params'}:
    params = params['params']
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


def jax_msgpack_to_params(path: str, use_ema: bool = True) -> Params:
  """Flax params from an original score_sde (JAX) checkpoint file.

  The file is a flax-serialized training `State`; the EMA parameters are `params_ema`,
  the raw ones `optimizer.target`. Their tree already has this project's names.
  """
  return _jax_state_to_params(_read_jax_state(path), path, use_ema)


def is_torch_checkpoint(path: str) -> bool:
  """True for a `torch.save` file (zip archive or legacy pickle stream), False otherwise.

  Decided by the content, not the name: the JAX release names its files `checkpoint_<n>`
  without an extension.
  """
  if zipfile.is_zipfile(path):
    return True
  with open(path, 'rb') as f:
    head = f.read(2)
  # The legacy torch format starts with a pickle: PROTO opcode 0x80 and protocol 2..5.
  # (A msgpack State starts with a non-empty map, 0x81..0x8f or 0xde/0xdf.)
  return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def read_checkpoint(path: str, config) -> tuple[Params, Params, int | None]:
  """(EMA params, raw params, stored step or None) of an official checkpoint file.

  Args:
    path: a score_sde_pytorch `.pth` file or an original score_sde (JAX) `checkpoint_<n>`
      msgpack file; the format is detected from the content.
    config: the ConfigDict the checkpoint was trained with (configs/ holds them all).
  Returns:
    Two parameter trees of `get_model(config)` (float32), and the training step the file
    records. Where a file holds only one set of weights (a bare PyTorch state dict), both
    trees are that set.
  Raises:
    FileNotFoundError: no file at `path`.
    ValueError: not a checkpoint, or one that does not fit the network of `config`.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'No checkpoint at {path!r}.')
  if is_torch_checkpoint(path):
    flat, step = _read_torch_checkpoint(path)
    raw = _torch_flat_to_params(flat, config, use_ema=False, path=path)
    has_ema = any(k.startswith('ema.shadow_params.') for k in flat)
    if not has_ema:
      log.warning('%s holds no EMA weights; importing its model weights as both.', path)
    ema = _torch_flat_to_params(flat, config, use_ema=True, path=path) if has_ema else raw
  else:
    state = _read_jax_state(path)
    step = _as_step(state.get('step'))
    ema = _jax_state_to_params(state, path, use_ema=True)
    try:
      raw = _jax_state_to_params(state, path, use_ema=False)
    except ValueError:
      log.warning('%s holds no optimizer.target; using the EMA weights as the raw ones.', path)
      raw = ema
    shapes = _param_shapes(config)[1]
    _check_tree(ema, shapes, path)
    _check_tree(raw, shapes, path)
  return ema, raw, step


def _check_tree(params: Params, shapes: Params, path: str):
  """Raises ValueError naming the first differences between `params` and `shapes`."""
  got = {'/'.join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}
  want = {'/'.join(k): tuple(v.shape)
          for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes)).items()}
  problems = [f'missing {k}' for k in sorted(set(want) - set(got))]
  problems += [f'unexpected {k}' for k in sorted(set(got) - set(want))]
  problems += [f'{k}: shape {got[k]} vs {want[k]}' for k in sorted(set(got) & set(want))
               if got[k] != want[k]]
  if problems:
    raise ValueError(f'{path!r} does not fit the network of this config '
                     f'({len(problems)} differences: {"; ".join(problems[:5])}'
                     f'{" ..." if len(problems) > 5 else ""}). Is it the right config file?')


def import_checkpoint(config, checkpoint_path: str, workdir: str, step: int | None = None,
                      rng=None):
  """Imports an official checkpoint into a run directory of this project.

  Afterwards `main.py --mode eval` / `--mode sample` with the same config and `workdir`
  use it like a snapshot of our own training: `WORKDIR/checkpoints/<step>/` holds a full
  `losses.TrainState` and `WORKDIR/config.json` the config.

  Args:
    config: the ConfigDict the checkpoint was trained with (e.g.
      `configs.load_config('configs/ve/cifar10_ncsnpp_continuous.py')`).
    checkpoint_path: score_sde_pytorch `.pth` or original score_sde (JAX) msgpack file.
    workdir: run directory to write (created if needed). One that already holds a run of
      another config is refused (`run.train.WorkdirConfigMismatch`).
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
  """
  # Lazy: the run machinery (orbax, datasets, samplers) is not needed for plain conversion.
  from scoresde_jax import checkpoints, losses  # pylint: disable=import-outside-toplevel
  from scoresde_jax.run import setup, train  # pylint: disable=import-outside-toplevel

  ema, raw, stored_step = read_checkpoint(checkpoint_path, config)
  if step is None:
    step = 0 if stored_step is None else stored_step
  step = int(step)
  if step < 0:
    raise ValueError(f'step must be >= 0; got {step}.')
  if rng is None:
    rng = jax.random.PRNGKey(config.get('seed', 42))
  # The state a run of this config starts from, abstractly (shapes and dtypes only: running
  # the initializers eagerly would cost tens of seconds and its values are all replaced).
  template = jax.eval_shape(lambda key: setup.create_train_state(config, key)[2], rng)
  _check_tree(ema, template.params, checkpoint_path)
  cast = lambda tree: jax.tree.map(lambda a, t: jnp.asarray(a, t.dtype), tree, template.params)
  ema, raw = cast(ema), cast(raw)
  optimizer = losses.optimizer_from_config(config)
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
      raise ValueError(f'{workdir!r} already holds a snapshot at step {step}; choose another '
                       '--step or a new --workdir.')
    ckpts.save(state, snapshot=True)
    ckpts.wait()
  finally:
    ckpts.close()
  return state


def _load_config(path: str):
  """The config of a config file; configs inside a checkout's configs/ load with their defaults."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Config file not found: {path!r}.')
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
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('_scoresde_config', path)
  if spec is None or spec.loader is None:
    raise ValueError(f'Cannot load config file {path!r} (not a Python file?).')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    raise ValueError(f'Config file {path!r} defines no get_config() function.')
  return module.get_config()


_USAGE = """
  import into a run directory (then main.py --mode eval / sample on it):
    python -m scoresde_jax.convert --config configs/ve/cifar10_ncsnpp_continuous.py \\
        --checkpoint checkpoint_24.pth --workdir runs/ve_cifar10_ncsnpp_continuous --ckpt 24
  write only the parameters (flax msgpack):
    python -m scoresde_jax.convert --config CONFIG --checkpoint FILE --output params.msgpack
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
  try:
    config = _load_config(args.config)
    if args.output is not None:
      if args.step is not None or args.ckpt is not None:
        parser.error('--step/--ckpt apply to --workdir imports only.')
      ema, raw, _ = read_checkpoint(args.checkpoint, config)
      params = raw if args.no_ema else ema
      with open(args.output, 'wb') as f:
        f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
      print(f'Wrote {args.output}')
      return
    if args.no_ema:
      parser.error('--no-ema applies to --output only (an import keeps both weight sets).')
    step = args.step
    if args.ckpt is not None:
      step = args.ckpt * int(config.training.snapshot_freq)
    state = import_checkpoint(config, args.checkpoint, args.workdir, step=step)
  except (FileNotFoundError, ValueError) as e:
    parser.exit(1, f'error: {e}\n')
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
