"""The bfloat16 compute path (`config.model.dtype = 'bfloat16'`) of a training step.

What the GPU profile asks of it: every convolution of the lowered train step, forward and
backward, runs in bfloat16; the normalization statistics, the loss and the parameters stay
float32; and training follows float32's loss curve.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import load_config
from scoresde_jax import datasets, losses
from scoresde_jax.run import data, networks, setup

# Operand and result types of a StableHLO convolution / the operand type of a reduction.
CONVOLUTION = re.compile(r'stablehlo\.convolution.*: \((tensor<[^>]*>), (tensor<[^>]*>)\)'
                         r' -> (tensor<[^>]*>)')
REDUCTION = re.compile(r'stablehlo\.reduce\(%[^)]*\).*?: \((tensor<[^>]*>)')


def _config(name, dtype, batch_size):
  config = load_config(f'configs/{name}.py')
  config.model.dtype = dtype
  config.training.batch_size = batch_size
  return config


def _digits_with_fir(dtype, batch_size):
  """The digits network with NCSN++'s FIR resampling and input pyramid (ve/cifar10_ncsnpp's
  choices): every resampling path of the CIFAR-10 networks at digits size."""
  config = _config('ve/digits', dtype, batch_size)
  config.model.fir = True
  config.model.resamp_with_conv = True
  config.model.progressive_input = 'residual'
  return config


def _step_fn(config, model):
  loss_fn = setup.get_loss_fn(config, setup.get_sde(config), model, train=True)
  return losses.get_step_fn(loss_fn, setup.get_optimizer(config), config.model.ema_rate)


@pytest.mark.parametrize('fir', [False, True])
def test_every_convolution_of_the_train_step_is_bfloat16(fir):
  """Forward, input-gradient and weight-gradient convolutions (and with FIR the resampling
  filters, which are slices, not convolutions); statistics and the loss in float32."""
  config = _digits_with_fir('bfloat16', 2) if fir else _config('ve/digits', 'bfloat16', 2)
  model, state = setup.model_and_template(config)
  step_fn = _step_fn(config, model)
  size, channels = config.data.image_size, config.data.num_channels
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  step = jax.jit(step_fn).lower(state, x).as_text()
  apply_fn = setup.get_apply_fn(model, train=False)
  forward = jax.jit(lambda p, x: apply_fn(p, x, jnp.ones((2,)), None)).lower(
      state.params, x).as_text()

  n_forward = len(CONVOLUTION.findall(forward))
  convolutions = CONVOLUTION.findall(step)
  # Each network convolution appears three times in the step, itself and its two transposes,
  # except the input gradients of those applied to the data (not differentiated).
  assert n_forward > 0 and 2 * n_forward < len(convolutions) < 3 * n_forward
  not_bf16 = [c for c in convolutions if any('xbf16>' not in t for t in c)]
  assert not not_bf16, f'{len(not_bf16)} of {len(convolutions)} convolutions are not bf16'
  # GroupNorm means and variances and the attention softmax reduce float32 values.
  reductions = REDUCTION.findall(forward)
  assert reductions and all(r.endswith('xf32>') for r in reductions), set(reductions)
  metrics = jax.eval_shape(step_fn, state, x)[1]
  assert metrics['loss'].dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))


def test_two_hundred_digits_steps_follow_float32():
  """The same 200 steps (initialization, batches, noise) in float32 and in bfloat16: the
  mean training loss of the last 100 steps agrees within 0.5%."""
  n_steps, batch_size = 200, 8
  images, _ = datasets.load_digits('train', image_size=8, num_channels=1)
  order = np.random.RandomState(0).randint(0, len(images), (n_steps, batch_size))
  # One initialization for both (parameters are float32 either way), computed in one
  # compiled call.
  initial = jax.jit(lambda key: setup.create_train_state(
      _config('ve/digits', 'float32', batch_size), key)[2])(jax.random.PRNGKey(0))
  step_losses = {}
  for dtype in ('float32', 'bfloat16'):
    config = _config('ve/digits', dtype, batch_size)
    step = jax.jit(_step_fn(config, networks.get_model(config)))
    batches = data.get_data_scaler(config)(jnp.asarray(images[order]))
    state = initial
    # One call a step, as CPU training runs (XLA:CPU is slow at convolution gradients in loops).
    for batch in batches:
      state, metrics = step(state, batch)
      step_losses.setdefault(dtype, []).append(metrics['loss'])
  step_losses = {d: np.asarray(v) for d, v in step_losses.items()}
  f32, bf16 = (step_losses[d][-100:].mean() for d in ('float32', 'bfloat16'))
  # A learning run, not a comparison of initial values.
  assert f32 < 0.8 * step_losses['float32'][:10].mean()
  assert abs(bf16 / f32 - 1) < 5e-3, (f32, bf16)
  # ... and bfloat16 did round: the two runs are not the same computation.
  assert not np.array_equal(step_losses['float32'], step_losses['bfloat16'])
