"""Training objectives and the jit-compiled training step.

A network enters the objectives as `apply_fn(params, x, labels, rng) -> output`, its raw
output (the dropout `rng` is unused by deterministic models); a class-conditional one
(`num_classes` > 0) as `apply_fn(params, x, labels, rng, class_labels=y)`. The SDE-specific meaning of
labels and outputs is applied by `models.model_fn_to_score_fn`, the single place that
holds those conventions; the discrete SMLD and DDPM losses use the raw output directly,
as in the reference.

A loss function is `loss_fn(params, batch, rng) -> loss` with `batch: [B, H, W, C]` or
{'image': [B, H, W, C], 'label': [B] int}. With `num_classes` > 0 the labels condition the
network, each replaced by the null class `num_classes` with probability `label_dropout`
(`drop_labels`), so one network learns the conditional and the unconditional scores that
classifier-free guidance combines (Ho & Salimans 2022).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import optax

from scoresde_jax import sde_lib
from scoresde_jax.models.utils import model_fn_to_score_fn
from scoresde_jax.sde_lib import batch_mul

ApplyFn = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


def drop_labels(rng, labels, num_classes: int, rate: float):
  """Each of `labels` ([B] int) replaced by the null class `num_classes` with probability
  `rate`, independently: classifier-free guidance's label dropout."""
  drop = jax.random.bernoulli(rng, rate, labels.shape)
  return jnp.where(drop, num_classes, labels).astype(jnp.int32)


def _check_conditioning(num_classes, label_dropout):
  if num_classes < 0:
    raise ValueError(f'num_classes must be >= 0 (0: unconditional), got {num_classes}.')
  if not 0.0 <= label_dropout <= 1.0:
    raise ValueError(f'label_dropout must lie in [0, 1], got {label_dropout}.')


def _images_and_labels(batch, rng, num_classes: int, label_dropout: float):
  """(images [B, ...], class labels [B] or None) of a batch: an image array or a dict with
  'image' (and 'label'); labels only for a class-conditional network, after dropout."""
  images = batch['image'] if isinstance(batch, Mapping) else batch
  if not num_classes:
    return images, None
  if not isinstance(batch, Mapping) or 'label' not in batch:
    raise ValueError('A class-conditional objective (num_classes > 0) needs batches '
                     "{'image', 'label'}.")
  labels = batch['label'].astype(jnp.int32)
  if label_dropout > 0:
    # The 4th key of the 3-way split the objectives make of `rng`: independent of the
    # other three, which stay those of unconditional training.
    labels = drop_labels(jax.random.split(rng, 4)[3], labels, num_classes, label_dropout)
  return images, labels


def _class_kwargs(class_labels):
  # Unconditional networks are called as they always were (no class_labels argument).
  return {} if class_labels is None else {'class_labels': class_labels}


def _per_example(losses, reduce_mean):
  """Mean (reduce_mean) or half sum over the data dimensions: [B, ...] -> [B]."""
  flat = losses.reshape(losses.shape[0], -1)
  return jnp.mean(flat, axis=-1) if reduce_mean else 0.5 * jnp.sum(flat, axis=-1)


def get_sde_loss_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, continuous: bool = True,
                    reduce_mean: bool = True, likelihood_weighting: bool = False,
                    eps: float = 1e-5, importance_weighting: bool = False,
                    num_classes: int = 0, label_dropout: float = 0.0):
  """Denoising score matching over t ~ U(eps, T).

  Weighting lambda(t) = std(t)^2 (the paper's) by default: E |std * score + z|^2; with
  `likelihood_weighting`, lambda(t) = g(t)^2 (Song et al. 2021, maximum likelihood training):
  E g^2 |score + z / std|^2. `importance_weighting` (with `likelihood_weighting`) draws t
  from q(t) ~ g^2 / std^2 instead and weights each term by u(t) / q(t): the same
  expectation with a much smaller variance (`sde_lib.importance_sampled_times`).
  `num_classes`, `label_dropout`: class conditioning (see the module docstring).
  """
  if importance_weighting and not likelihood_weighting:
    raise ValueError('importance_weighting samples t for the likelihood weighting; it needs '
                     'likelihood_weighting=True.')
  _check_conditioning(num_classes, label_dropout)

  def loss_fn(params, batch, rng):
    batch, class_labels = _images_and_labels(batch, rng, num_classes, label_dropout)
    t_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    if importance_weighting:
      t, weights = sde_lib.importance_sampled_times(sde, t_rng, (batch.shape[0],), eps)
    else:
      t = jax.random.uniform(t_rng, (batch.shape[0],), minval=eps, maxval=sde.T)
    z = jax.random.normal(z_rng, batch.shape, batch.dtype)
    mean, std = sde.marginal_prob(batch, t)
    perturbed = mean + batch_mul(std, z)
    model_fn = lambda x, labels: apply_fn(params, x, labels, dropout_rng,
                                          **_class_kwargs(class_labels))
    score = model_fn_to_score_fn(sde, model_fn, continuous)(perturbed, t).astype(jnp.float32)
    if likelihood_weighting:
      g2 = sde.sde(jnp.zeros_like(batch), t)[1] ** 2
      losses = _per_example(jnp.square(score + batch_mul(1.0 / std, z)), reduce_mean) * g2
      if importance_weighting:
        losses = losses * weights
    else:
      losses = _per_example(jnp.square(batch_mul(std, score) + z), reduce_mean)
    return jnp.mean(losses)

  return loss_fn


def get_smld_loss_fn(vesde: sde_lib.VESDE, apply_fn: ApplyFn, reduce_mean: bool = False,
                     num_classes: int = 0, label_dropout: float = 0.0):
  """NCSN's discrete loss: sigma^2-weighted score matching at the N noise levels.

  Labels are noise-level indices with 0 the largest sigma, as SMLD models expect.
  `num_classes`, `label_dropout`: class conditioning (see the module docstring).
  """
  if not isinstance(vesde, sde_lib.VESDE):
    raise ValueError('The SMLD loss is defined for the VE SDE (config.training.sde = "vesde").')
  _check_conditioning(num_classes, label_dropout)

  def loss_fn(params, batch, rng):
    batch, class_labels = _images_and_labels(batch, rng, num_classes, label_dropout)
    label_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (batch.shape[0],), 0, vesde.N)
    sigmas = vesde.discrete_sigmas[::-1][labels]
    noise = batch_mul(sigmas, jax.random.normal(z_rng, batch.shape, batch.dtype))
    score = apply_fn(params, batch + noise, labels, dropout_rng,
                     **_class_kwargs(class_labels)).astype(jnp.float32)
    target = -batch_mul(1.0 / sigmas**2, noise)
    return jnp.mean(_per_example(jnp.square(score - target), reduce_mean) * sigmas**2)

  return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VPSDE, apply_fn: ApplyFn, reduce_mean: bool = True,
                     num_classes: int = 0, label_dropout: float = 0.0):
  """DDPM's discrete epsilon-matching loss at the N steps of its Markov chain.

  `num_classes`, `label_dropout`: class conditioning (see the module docstring).
  """
  if not isinstance(vpsde, sde_lib.VPSDE):
    raise ValueError('The DDPM loss is defined for the VP SDE (config.training.sde = "vpsde").')
  _check_conditioning(num_classes, label_dropout)

  def loss_fn(params, batch, rng):
    batch, class_labels = _images_and_labels(batch, rng, num_classes, label_dropout)
    label_rng, z_rng, dropout_rng = jax.random.split(rng, 3)
    labels = jax.random.randint(label_rng, (batch.shape[0],), 0, vpsde.N)
    noise = jax.random.normal(z_rng, batch.shape, batch.dtype)
    perturbed = (batch_mul(vpsde.sqrt_alphas_cumprod[labels], batch)
                 + batch_mul(vpsde.sqrt_1m_alphas_cumprod[labels], noise))
    out = apply_fn(params, perturbed, labels, dropout_rng,
                   **_class_kwargs(class_labels)).astype(jnp.float32)
    return jnp.mean(_per_example(jnp.square(out - noise), reduce_mean))

  return loss_fn


def get_loss_fn(sde, apply_fn, continuous=True, reduce_mean=False, likelihood_weighting=False,
                eps=1e-5, importance_weighting=False, num_classes=0, label_dropout=0.0):
  """The paper's objective for `sde`: continuous DSM, or SMLD / DDPM when not continuous;
  class-conditional with `num_classes` > 0 (see the module docstring)."""
  conditioning = dict(num_classes=num_classes, label_dropout=label_dropout)
  if continuous:
    return get_sde_loss_fn(sde, apply_fn, True, reduce_mean, likelihood_weighting, eps,
                           importance_weighting, **conditioning)
  if likelihood_weighting or importance_weighting:
    raise ValueError('Likelihood weighting needs continuous training (config.training.continuous).')
  if isinstance(sde, sde_lib.VESDE):
    return get_smld_loss_fn(sde, apply_fn, reduce_mean, **conditioning)
  if isinstance(sde, sde_lib.VPSDE):
    return get_ddpm_loss_fn(sde, apply_fn, reduce_mean, **conditioning)
  raise ValueError(f'Discrete-time training is defined for VESDE and VPSDE, not {type(sde).__name__}.')


# ----------------------------------------------------------------------------------------
# Optimization


def learning_rate_schedule(lr: float, warmup: int = 0, decay_steps: int = 0) -> Callable:
  """count -> learning rate of the update made after `count` earlier updates:
  lr * min(count / warmup, 1), times a half cosine from 1 at the end of the warmup to 0 at
  `decay_steps` updates when that is > 0 (constant lr with neither)."""
  def schedule(count):
    rate = jnp.full((), lr, jnp.float32)
    if warmup > 0:
      rate = rate * jnp.minimum(count / warmup, 1.0)
    if decay_steps > 0:
      progress = jnp.clip((count - warmup) / max(decay_steps - warmup, 1), 0.0, 1.0)
      rate = rate * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
    return rate
  return schedule


def get_optimizer(lr: float, warmup: int = 0, grad_clip: float = -1.0, beta1: float = 0.9,
                  beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
                  decay_steps: int = 0) -> optax.GradientTransformation:
  """Adam as the reference configures it.

  The learning rate ramps linearly, lr * min(step / warmup, 1) with step counted from 0
  (so the very first update has learning rate 0, as in the reference); with `decay_steps`
  it then falls along a half cosine to 0 at that step (not in the reference: a short run
  ends on small steps instead of the noise of a constant rate); gradients are clipped
  to global norm `grad_clip` (off when negative); weight decay is decoupled (AdamW).
  """
  # A plain float with a constant rate keeps the optimizer state free of a schedule counter.
  constant = warmup <= 0 and decay_steps <= 0
  schedule = lr if constant else learning_rate_schedule(lr, warmup, decay_steps)
  parts = []
  if grad_clip >= 0:
    parts.append(optax.clip_by_global_norm(grad_clip))
  parts.append(optax.adamw(schedule, b1=beta1, b2=beta2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs to continue exactly.

  `rng` is the run's base key; the key of step s is fold_in(rng, s), so the random stream
  depends only on (rng, step) and not on how steps were grouped into compiled calls.
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  rng: jax.Array


def init_train_state(params, optimizer: optax.GradientTransformation, rng) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=rng)


def global_norm(tree):
  """sqrt of the sum of squares of every leaf (the logged grad_norm)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


def ema_update(ema_params, params, ema_rate: float):
  """The exponential moving average of parameters after one step."""
  return jax.tree_util.tree_map(lambda e, p: e * ema_rate + p * (1.0 - ema_rate),
                                ema_params, params)


def get_step_fn(loss_fn, optimizer: optax.GradientTransformation | None = None,
                ema_rate: float = 0.999, train: bool = True):
  """`step(state, batch) -> (state, metrics)`: one optimizer and EMA update.

  With `train=False` it evaluates the loss at the EMA parameters and leaves the state as is.
  Written for the global view: under `jit` with the batch sharded over devices, the mean
  loss and its gradient are over the global batch, so no explicit all-reduce appears here.
  """

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if not train:
      return state, {'loss': loss_fn(state.ema_params, batch, rng)}
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = ema_update(state.ema_params, params, ema_rate)
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema_params,
                              opt_state=opt_state)
    return new_state, {'loss': loss, 'grad_norm': global_norm(grads)}

  return step


def get_multi_step_fn(step_fn):
  """Fuses several steps into one call: `batches: [n, B, ...]` (or a pytree of such arrays)
  -> metrics stacked `[n]`.

  The reference's `n_jitted_steps`: amortizes dispatch and host overhead over n steps.
  """

  def multi_step(state, batches):
    if jax.tree_util.tree_leaves(batches)[0].shape[0] == 1:
      # Without a loop: XLA:CPU runs convolution gradients inside while loops many times
      # slower than outside them, so CPU runs use n_jitted_steps = 1.
      state, metrics = step_fn(state, jax.tree_util.tree_map(lambda b: b[0], batches))
      return state, jax.tree_util.tree_map(lambda m: m[None], metrics)
    return jax.lax.scan(step_fn, state, batches)

  return multi_step
