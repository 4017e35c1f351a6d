"""Parameters of the official score_sde checkpoints -> this project's Flax parameter trees.

Two sources:
  * score_sde_pytorch `.pth` files: `model` is a (DataParallel) state dict with keys
    `module.all_modules.{i}.{Sub_j}.{leaf}` in module-creation order (NCSNpp, DDPM) or named
    by attribute (NCSN, NCSNv2: `ncsnv2.params_from_torch`) plus a `sigmas` buffer;
    `ema.shadow_params` is a positional list aligned with the trainable parameters (so it
    lacks the fixed Fourier-feature `W`, which only the model state dict has).
  * the original JAX release: flax msgpack files holding the training `State`, parameters
    under `params_ema` and `optimizer.target`, already in our layout (same auto-names).

PyTorch modules are matched to Flax modules by creation order: the i-th top-level
PyTorch module with parameters is the i-th top-level Flax module with parameters (the
Flax order is recorded by tracing the network's `init`). Within a module the sub-module
names coincide (`GroupNorm_0`, `Conv_1`, `Dense_0`, `NIN_0`, `Conv2d_0`). Leaves:
conv weight OIHW -> kernel HWIO, Linear weight [out, in] -> kernel [in, out], GroupNorm
weight -> scale, `bias`/`W`/`b` unchanged, StyleGAN-style `Conv2d.weight` OIHW -> HWIO.

Every function takes the network (a Flax module) and the shape of one input image
`(height, width, channels)`. `scoresde_jax.run.convert` builds both from a config and
writes a checkpoint's weights as a run directory of this project (also from the command
line).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from scoresde_jax import errors, models, torch_pickle
from scoresde_jax.models import ncsnv2

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


def _param_shapes(model: nn.Module, image_shape: Sequence[int]) -> tuple[Params, list[str]]:
  """(Flax parameter shapes of `model`, its top-level module names in creation order)."""
  order: list[str] = []

  def record(next_fun, args, kwargs, context):
    # Direct children of the network have a one-element scope path, e.g. ('Conv_0',).
    path = context.module.scope.path if context.module.scope is not None else ()
    if len(path) == 1 and path[0] not in order:
      order.append(path[0])
    return next_fun(*args, **kwargs)

  def init():
    with nn.intercept_methods(record):
      return models.init_params(model, jax.random.PRNGKey(0), image_shape)

  shapes = jax.eval_shape(init)
  return shapes, [name for name in order if name in shapes]


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


def torch_state_dict_to_params(state_dict: Mapping[str, Any], model: nn.Module,
                               image_shape: Sequence[int]) -> Params:
  """Flax params of `model` from a score_sde_pytorch model state dict.

  Args:
    state_dict: name -> array (numpy or anything `np.asarray` takes), with or without the
      DataParallel `module.` prefix. The `sigmas` buffer is ignored, as are the
      per-block `Dense_0` layers PyTorch creates (but never uses) when the network is not
      `conditional`. A state dict without `all_modules.<i>` entries is an NCSN/NCSNv2 one
      and goes to `ncsnv2.params_from_torch`.
    model: the network the checkpoint was trained as (its fields: those it was trained with).
    image_shape: `(height, width, channels)` of one input image.
  Returns:
    nested dict of float32 jax arrays, the `params` collection of `model`.
  Raises:
    ValueError: keys or shapes that do not fit `model`.
  """
  sd = _strip_prefix(state_dict)
  if not any(_ALL_MODULES.match(key) for key in sd):
    return ncsnv2.params_from_torch(sd, model, image_shape)
  shapes, flax_order = _param_shapes(model, image_shape)
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
          if part == 'Dense_0' and depth == 0 and not model.conditional:
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
  # Checked after the walk: where the counts differ, the walk has usually stopped at the
  # first module that does not fit, a more useful message than the counts.
  if len(torch_order) != len(flax_order):
    first = min(len(torch_order), len(flax_order))
    extra = (f'all_modules.{torch_order[first]} has no counterpart' if len(torch_order) > first
             else f'{flax_order[first]} has no counterpart in the state dict')
    raise ValueError(f'The state dict has {len(torch_order)} modules with parameters, the '
                     f'network {len(flax_order)} ({extra}).')

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
                         model: nn.Module, image_shape: Sequence[int]) -> Params:
  """Flax params holding the EMA weights of a score_sde_pytorch checkpoint.

  Args:
    shadow_params: `checkpoint['ema']['shadow_params']`, the EMA copies of the trainable
      parameters in `model.parameters()` order (= state-dict order without buffers and the
      fixed Fourier `W`).
    model_state_dict: `checkpoint['model']`, which names the entries and supplies `W`.
    model, image_shape: as for `torch_state_dict_to_params`.
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
  return torch_state_dict_to_params(merged, model, image_shape)


def _read_torch_checkpoint(path: str) -> tuple[dict[str, np.ndarray], int | None]:
  """(tensors flattened with '.', the top-level `step` or None) of a `.pth` file."""
  tree = torch_pickle.load(path)
  step = tree.get('step') if isinstance(tree, dict) else None
  return torch_pickle.flatten(tree), _as_step(step)


def _as_step(value) -> int | None:
  """A stored step (int, numpy scalar or 0-d array) as int; None if there is none."""
  if value is None:
    return None
  try:
    return int(np.asarray(value).reshape(()))
  except (TypeError, ValueError):
    return None


def _torch_flat_to_params(flat: Mapping[str, np.ndarray], model: nn.Module,
                          image_shape: Sequence[int], use_ema: bool, path: str) -> Params:
  model_sd = {k[len('model.'):]: v for k, v in flat.items() if k.startswith('model.')}
  if not model_sd:  # a bare state dict
    if use_ema:
      raise ValueError(f'{path!r} is a bare state dict without EMA weights; '
                       'pass use_ema=False.')
    return torch_state_dict_to_params(flat, model, image_shape)
  if not use_ema:
    return torch_state_dict_to_params(model_sd, model, image_shape)
  prefix = 'ema.shadow_params.'
  shadow = {int(k[len(prefix):]): v for k, v in flat.items() if k.startswith(prefix)}
  if not shadow:
    raise ValueError(f'{path!r} has no ema.shadow_params; pass use_ema=False.')
  if sorted(shadow) != list(range(len(shadow))):
    raise ValueError(f'{path!r}: ema.shadow_params indices are not 0..{len(shadow) - 1}.')
  return ema_shadow_to_params([shadow[i] for i in range(len(shadow))], model_sd, model,
                              image_shape)


def torch_checkpoint_to_params(path: str, model: nn.Module, image_shape: Sequence[int],
                               use_ema: bool = True) -> Params:
  """Flax params of `model` from a score_sde_pytorch `.pth` checkpoint (EMA weights by default).

  Reads the file with `torch_pickle` (no torch, only tensors, storages and builtin
  containers accepted). Accepts a full training checkpoint (`model`, `ema`, `optimizer`,
  `step`) or a bare model state dict (then `use_ema` must be False).

  Raises:
    errors.CheckpointNotFoundError: no file at `path`.
    errors.UnsafeCheckpointError: the pickle references more than tensors.
    errors.CheckpointError: not a torch checkpoint, or a damaged one.
    ValueError: a checkpoint that does not fit `model`.
  """
  flat, _ = _read_torch_checkpoint(path)
  return _torch_flat_to_params(flat, model, image_shape, use_ema, path)


def _read_jax_state(path: str) -> dict:
  """The training `State` dict of an original score_sde (flax msgpack) checkpoint file."""
  if not os.path.isfile(path):
    raise errors.CheckpointNotFoundError(f'No checkpoint at {path!r}.')
  with open(path, 'rb') as f:
    try:
      state = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises several types on corrupt input
      raise errors.CheckpointError(f'{path!r} is neither a torch .pth nor a readable flax '
                                   f'msgpack checkpoint ({e}).') from e
  if not isinstance(state, dict):
    raise errors.CheckpointError(f'{path!r} does not hold a training State dict.')
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


def read_checkpoint(path: str, model: nn.Module,
                    image_shape: Sequence[int]) -> tuple[Params, Params, int | None]:
  """(EMA params, raw params, stored step or None) of an official checkpoint file.

  Args:
    path: a score_sde_pytorch `.pth` file or an original score_sde (JAX) `checkpoint_<n>`
      msgpack file; the format is detected from the content.
    model: the network the checkpoint was trained as.
    image_shape: `(height, width, channels)` of one input image.
  Returns:
    Two parameter trees of `model` (float32), and the training step the file records.
    Where a file holds only one set of weights (a bare PyTorch state dict), both trees are
    that set.
  Raises:
    errors.CheckpointNotFoundError: no file at `path`.
    errors.UnsafeCheckpointError: a `.pth` whose pickle references more than tensors.
    errors.CheckpointError: not a checkpoint, or a damaged one.
    ValueError: a checkpoint that does not fit `model`.
  """
  if not os.path.isfile(path):
    raise errors.CheckpointNotFoundError(f'No checkpoint at {path!r}.')
  if torch_pickle.is_torch_file(path):
    flat, step = _read_torch_checkpoint(path)
    raw = _torch_flat_to_params(flat, model, image_shape, use_ema=False, path=path)
    has_ema = any(k.startswith('ema.shadow_params.') for k in flat)
    if not has_ema:
      log.warning('%s holds no EMA weights; importing its model weights as both.', path)
    ema = (_torch_flat_to_params(flat, model, image_shape, use_ema=True, path=path)
           if has_ema else raw)
  else:
    state = _read_jax_state(path)
    step = _as_step(state.get('step'))
    ema = _jax_state_to_params(state, path, use_ema=True)
    try:
      raw = _jax_state_to_params(state, path, use_ema=False)
    except ValueError:
      log.warning('%s holds no optimizer.target; using the EMA weights as the raw ones.', path)
      raw = ema
    shapes, _ = _param_shapes(model, image_shape)
    check_tree(ema, shapes)
    check_tree(raw, shapes)
  return ema, raw, step


def check_tree(params: Params, shapes: Params):
  """Raises ValueError naming the first differences between `params` and `shapes` (a tree
  of arrays or shape structs)."""
  got = {'/'.join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}
  want = {'/'.join(k): tuple(v.shape)
          for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(shapes)).items()}
  problems = [f'missing {k}' for k in sorted(set(want) - set(got))]
  problems += [f'unexpected {k}' for k in sorted(set(got) - set(want))]
  problems += [f'{k}: shape {got[k]} vs {want[k]}' for k in sorted(set(got) & set(want))
               if got[k] != want[k]]
  if problems:
    raise ValueError(f'{len(problems)} parameters do not fit: {"; ".join(problems[:5])}'
                     f'{" ..." if len(problems) > 5 else ""}')
