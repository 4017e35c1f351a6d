"""Class-conditional score networks and classifier-free guidance.

Networks: `num_classes=0` builds the unconditional network unchanged; a conditional one is
the unconditional one plus a zero-initialized `class_embed`, so it computes the same outputs
for every label until the embedding moves. Guidance against closed-form answers: for a
labelled Gaussian mixture the class-conditional score is that of one component, and the
guided score (1 + w) s(x, t, y) - w s(x, t) must be the gradient of
log p_t(x | y)^(1 + w) / p_t(x)^w computed from the log densities. Sampling with the exact
conditional score returns the component; guidance on overlapping components sharpens it.
Objectives: label dropout at its rate; unconditional objectives as they were. Configs: the
conditional digits config reaches the training step and the sampler's score (traced, not
compiled: a real two-step run compiles for most of a minute on a 2-core CPU), and its
mistakes are one-line ConfigErrors.
"""
import functools
import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import configs
from scoresde_jax import controllable, errors, gmm, losses, models, sampling, sde_lib
from scoresde_jax.models import layers
from scoresde_jax.models import utils as model_utils
from scoresde_jax.models.ddpm import DDPM
from scoresde_jax.models.ncsnpp import NCSNpp
from scoresde_jax.run import data, setup, train

from run_utils import set_keys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 4  # classes of the test networks
VE = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)
VP = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
SUBVP = sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000)

_UNET = dict(ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
             resamp_with_conv=True, conditional=True, nonlinearity='swish', centered=True)


def _network(arch, num_classes=0, **fields):
  fields = dict(_UNET, **fields)
  if arch == 'ncsnpp':  # a VE NCSN++: labels are sigmas
    return NCSNpp(nf=8, scale_by_sigma=True, fir=False, fir_kernel=(1, 3, 3, 1),
                  skip_rescale=True, resblock_type='biggan', init_scale=0.0,
                  embedding_type='fourier', fourier_scale=16.0, num_classes=num_classes,
                  **fields)
  return DDPM(nf=32, scale_by_sigma=False, num_classes=num_classes, **fields)


@functools.lru_cache(maxsize=None)  # networks compare and hash by their fields
def _param_shapes(model):
  x, labels = jnp.zeros((1, 8, 8, 1)), jnp.ones((1,))
  tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False))
  return {'/'.join(k): v.shape for k, v in
          flax.traverse_util.flatten_dict(tree['params']).items()}


def _random_params(model, seed):
  """Parameters of the network's shapes, random (no initialization program to compile)."""
  rs = np.random.RandomState(seed)  # numpy: no small programs to compile, one per shape
  flat = {tuple(name.split('/')): jnp.asarray(0.3 * rs.randn(*shape), jnp.float32)
          for name, shape in sorted(_param_shapes(model).items())}
  return flax.traverse_util.unflatten_dict(flat)


def _inputs(arch, batch, same_image=False):
  x = jax.random.uniform(jax.random.PRNGKey(1), (1 if same_image else batch, 8, 8, 1),
                         minval=-1.0, maxval=1.0)
  x = jnp.broadcast_to(x, (batch, 8, 8, 1))
  # Not weakly typed: the same compiled programs serve these and computed labels.
  labels = jnp.full((batch,), 0.7 if arch == 'ncsnpp' else 400.0, jnp.float32)
  return x, labels


# ----------------------------------------------------------------------------------------
# Networks


@pytest.mark.parametrize('arch', ['ncsnpp', 'ddpm'])
def test_class_embedding_only_adds_a_parameter(arch):
  """num_classes=0: no new parameter; num_classes=K: one more, `class_embed` [K + 1, 4 nf],
  and every other name and shape unchanged (the explicit name moves no Dense_i index)."""
  unconditional = _param_shapes(_network(arch))
  conditional = dict(_param_shapes(_network(arch, K)))  # a copy: the shapes are cached
  assert not any('class' in name for name in unconditional)
  nf = _network(arch).nf
  assert conditional.pop('class_embed/embedding') == (K + 1, 4 * nf)
  assert conditional == unconditional
  # The time MLP comes first, as in the reference.
  assert 'Dense_0/kernel' in unconditional and 'Dense_1/kernel' in unconditional


def test_no_class_labels_is_the_null_class():
  class Embedding(flax.linen.Module):
    @flax.linen.compact
    def __call__(self, temb, class_labels):
      return layers.add_class_embedding(temb, class_labels, K)

  temb = jax.random.normal(jax.random.PRNGKey(0), (3, 8))
  params = {'class_embed': {'embedding': jax.random.normal(jax.random.PRNGKey(1), (K + 1, 8))}}
  apply = jax.jit(lambda y: Embedding().apply({'params': params}, temb, y))
  np.testing.assert_array_equal(apply(None), apply(jnp.full((3,), K)))
  np.testing.assert_allclose(apply(jnp.array([0, 1, K])),
                             temb + params['class_embed']['embedding'][jnp.array([0, 1, K])])


def test_class_fields_are_checked():
  with pytest.raises(errors.ArgumentError, match='num_classes=3 needs conditional=True') as e:
    DDPM(nf=32, scale_by_sigma=False, num_classes=3, **dict(_UNET, conditional=False))
  assert e.value.argument == 'num_classes'
  with pytest.raises(errors.ArgumentError, match='num_classes'):
    _network('ncsnpp', -1)
  x, labels = _inputs('ddpm', 2)
  model = _network('ddpm')
  with pytest.raises(errors.ArgumentError, match='class_labels'):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels, train=False,
                                      class_labels=jnp.zeros((2,), jnp.int32)))


# The outputs compared below: the NCSN++ (one resolution, to keep compilation short) with and
# without classes, compiled once for all the tests; the DDPM shares the class embedding code.
_UNCONDITIONAL = _network('ncsnpp', ch_mult=(1,))
_CONDITIONAL = _network('ncsnpp', K, ch_mult=(1,))
_apply_unconditional = jax.jit(
    lambda p, x, t: _UNCONDITIONAL.apply({'params': p}, x, t, train=False))
_apply_conditional = jax.jit(
    lambda p, x, t, y: _CONDITIONAL.apply({'params': p}, x, t, train=False, class_labels=y))


def _conditional_params(unconditional_params, seed=None):
  """The unconditional parameters plus a `class_embed`: zero, or random from `seed`."""
  shape = (K + 1, 4 * _CONDITIONAL.nf)
  table = (jnp.zeros(shape) if seed is None
           else jax.random.normal(jax.random.PRNGKey(seed), shape))
  return dict(unconditional_params, class_embed={'embedding': table})


def test_zero_class_embedding_gives_the_unconditional_network():
  """Unconditional parameters + a zero `class_embed` (what a fresh conditional network holds):
  the unconditional outputs, bit for bit, for every label and the null class; with a
  nonzero embedding, each label gives its own output."""
  # Initialization gives zeros: a fresh conditional network is the unconditional one. (Only
  # the embedding is returned, so the rest of the initialization compiles away.)
  fresh = jax.jit(lambda: _CONDITIONAL.init(jax.random.PRNGKey(0), *_inputs('ncsnpp', 1),
                                            train=False)['params']['class_embed'])()
  np.testing.assert_array_equal(fresh['embedding'], np.zeros((K + 1, 4 * _CONDITIONAL.nf)))

  params = _random_params(_UNCONDITIONAL, seed=2)
  every_label = jnp.arange(K + 1)  # K: the null class
  x, t = _inputs('ncsnpp', K + 1)
  np.testing.assert_array_equal(_apply_conditional(_conditional_params(params), x, t, every_label),
                                _apply_unconditional(params, x, t))

  x, t = _inputs('ncsnpp', K + 1, same_image=True)
  out = np.asarray(_apply_conditional(_conditional_params(params, seed=3), x, t, every_label))
  out = out.reshape(K + 1, -1)
  gaps = np.abs(out[:, None] - out[None]).max(-1)
  # Every pair of labels differs.
  assert (gaps + np.eye(K + 1) > 1e-3 * np.abs(out).max()).all(), gaps


def test_guided_network_score_is_one_call_on_the_doubled_batch(monkeypatch):
  """`get_score_fn` with labels and w: (1 + w) s(x, t, y) - w s(x, t, null) from one network
  call on [x, x], equal to the network's conditional and unconditional outputs (a VE
  continuous model: the output is the score, the network sees sigma(t))."""
  params = _conditional_params(_random_params(_UNCONDITIONAL, seed=4), seed=5)
  x = jax.random.normal(jax.random.PRNGKey(6), (K + 1, 8, 8, 1))
  t = jnp.linspace(0.2, 0.9, K + 1)
  sigmas = VE.marginal_prob(jnp.zeros(K + 1), t)[1]
  w = 1.5
  labels = np.array([2, 0, 3])  # cycled over the batch: 2, 0, 3, 2, 0
  guided = models.get_score_fn(VE, _CONDITIONAL, params, True, class_labels=labels,
                               guidance_scale=w)

  calls = []
  real = model_utils.get_model_fn

  def counting(*args, **kwargs):
    model_fn = real(*args, **kwargs)

    def counted(x, labels):
      calls.append((x.shape[0], kwargs.get('class_labels') is not None))
      return model_fn(x, labels)

    return counted

  monkeypatch.setattr(model_utils, 'get_model_fn', counting)
  jax.eval_shape(guided, x, t)
  assert calls == [(2 * (K + 1), True)]
  monkeypatch.undo()

  cond = np.asarray(_apply_conditional(params, x, sigmas, jnp.array([2, 0, 3, 2, 0])))
  uncond = np.asarray(_apply_conditional(params, x, sigmas, jnp.full((K + 1,), K)))
  assert np.abs(cond - uncond).max() > 1e-3 * np.abs(uncond).max()
  got = np.asarray(jax.jit(lambda g: g(x, t))(guided))
  np.testing.assert_allclose(got, (1 + w) * cond - w * uncond, rtol=1e-5,
                             atol=1e-5 * np.abs(got).max())
  # No labels: the null class (what the same network gives the unconditional score with).
  null = models.get_score_fn(VE, _CONDITIONAL, params, True)
  assert null.keywords == {} and null.func == model_utils.ScoreFn(VE, _CONDITIONAL, True)


def test_score_fn_argument_errors():
  model = _network('ddpm', K)
  with pytest.raises(errors.ArgumentError, match='guidance_scale'):
    models.get_score_fn(VP, model, None, True, guidance_scale=1.0)
  with pytest.raises(errors.ArgumentError, match=r'\[0, 4\]'):
    models.get_score_fn(VP, model, None, True, class_labels=[0, 5])
  with pytest.raises(errors.ArgumentError, match='integer'):
    models.get_score_fn(VP, model, None, True, class_labels=[0.5])
  with pytest.raises(errors.ArgumentError, match='unconditional'):
    models.get_score_fn(VP, _network('ddpm'), None, True, class_labels=[0])
  # Equal settings, equal ScoreFns (one compilation); another w, another program.
  a = models.get_score_fn(VP, model, None, True, class_labels=[1], guidance_scale=2.0)
  b = models.get_score_fn(VP, model, None, True, class_labels=[3], guidance_scale=2.0)
  c = models.get_score_fn(VP, model, None, True, class_labels=[3], guidance_scale=1.0)
  assert a.func == b.func and a.func != c.func
  np.testing.assert_array_equal(models.cycle_labels(np.array([4, 7]), 5), [4, 7, 4, 7, 4])


# ----------------------------------------------------------------------------------------
# Exact scores of a labelled Gaussian mixture


def _component(mixture, k):
  """p(x | y = k): the mixture of component k alone."""
  return gmm.GaussianMixture(np.ones(1), mixture.means[k:k + 1], mixture.variances[k:k + 1])


@pytest.mark.parametrize('sde', [VE, VP, SUBVP], ids=lambda s: type(s).__name__)
def test_guided_score_is_the_gradient_of_the_tilted_log_density(sde):
  mixture = gmm.random_mixture(seed=1, dim=3, num_components=3, spread=1.5)
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.normal(scale=2.0, size=(16, 3)), jnp.float32)
  t = jnp.asarray(rng.uniform(0.05, 1.0, 16), jnp.float32)
  components = [_component(mixture, k) for k in range(3)]

  @jax.jit  # w traced: one program for every w
  def guided_and_expected(x, t, w):
    pairs = []
    for component in components:

      def tilted_log_density(x):
        return jnp.sum((1 + w) * component.marginal_logpdf(sde, x, t)
                       - w * mixture.marginal_logpdf(sde, x, t))

      guided = controllable.guided_score_fn(component.score_fn(sde), mixture.score_fn(sde), w)
      pairs.append((guided(x, t), jax.grad(tilted_log_density)(x)))
    return pairs

  for w in (0.0, 0.5, 2.0, 7.5):
    for k, (got, expected) in enumerate(guided_and_expected(x, t, w)):
      np.testing.assert_allclose(got, expected, rtol=1e-4,
                                 atol=1e-4 * float(jnp.abs(expected).max()),
                                 err_msg=f'component {k}, w {w}')


def test_sampling_with_the_exact_conditional_score_and_guidance():
  """Two unit-variance components 1.5 apart, class 0 requested, the ODE sampler.

  w = 0 (the conditional score itself): component 0's mean and variance, within 4 standard
  errors of n samples (mean: sqrt(v / n); variance: v sqrt(2 / n)), and a sample is nearer
  its own mean with probability Phi(0.75) = 0.773. Guidance raises that fraction.
  """
  mixture = gmm.GaussianMixture(np.array([0.5, 0.5]), np.array([[-0.75, 0.0], [0.75, 0.0]]),
                                np.ones((2, 2)))
  n = 2000
  sampler = sampling.get_ode_sampler(VP, (n, 2))
  # Made once: w is a traced input, so the three solves share one compiled program.
  cond, uncond = _component(mixture, 0).score_fn(VP), mixture.score_fn(VP)
  samples = {w: np.asarray(sampler(jax.random.PRNGKey(1),
                                   controllable.guided_score_fn(cond, uncond, w))[0], np.float64)
             for w in (0.0, 0.5, 2.0)}

  x = samples[0.0]
  assert (np.abs(x.mean(0) - mixture.means[0]) < 4 * math.sqrt(1 / n) + 1e-3).all(), x.mean(0)
  assert (np.abs(x.var(0, ddof=1) - 1) < 4 * math.sqrt(2 / n) + 1e-3).all(), x.var(0, ddof=1)

  fractions = [float(np.mean(x[:, 0] < 0)) for x in samples.values()]
  p = 0.5 * (1 + math.erf(0.75 / math.sqrt(2)))
  std = math.sqrt(p * (1 - p) / n)
  assert abs(fractions[0] - p) < 4 * std, (fractions, p)
  assert fractions[1] > fractions[0] + 4 * std and fractions[2] > fractions[1] + 4 * std, fractions


# ----------------------------------------------------------------------------------------
# Objectives


def test_label_dropout_rate():
  n, rate = 200_000, 0.1
  labels = jnp.arange(n) % 10
  dropped = np.asarray(losses.drop_labels(jax.random.PRNGKey(0), labels, 10, rate))
  null = dropped == 10
  assert abs(null.mean() - rate) < 4 * math.sqrt(rate * (1 - rate) / n), null.mean()
  np.testing.assert_array_equal(dropped[~null], np.asarray(labels)[~null])
  assert not (np.asarray(losses.drop_labels(jax.random.PRNGKey(0), labels, 10, 0.0)) == 10).any()
  assert (np.asarray(losses.drop_labels(jax.random.PRNGKey(0), labels, 10, 1.0)) == 10).all()


def _recording_apply_fn(sde, seen):
  """An 'exact' network for data N(0, I) (any output convention will do here) that records
  the class labels it is given."""

  def apply_fn(params, x, labels, rng, class_labels=None):
    seen.append(None if class_labels is None else np.asarray(class_labels))
    return -x

  return apply_fn


@pytest.mark.parametrize('kind', ['sde', 'smld', 'ddpm'])
def test_objectives_drop_labels_at_the_requested_rate(kind):
  sde = VP if kind == 'ddpm' else VE
  n, rate = 20_000, 0.3
  batch = {'image': jnp.zeros((n, 2)), 'label': jnp.arange(n) % 7}
  seen = []
  loss_fn = losses.get_loss_fn(sde, _recording_apply_fn(sde, seen), continuous=kind == 'sde',
                               num_classes=7, label_dropout=rate)
  loss_fn(None, batch, jax.random.PRNGKey(0))
  labels = seen[-1]
  null = labels == 7
  assert abs(null.mean() - rate) < 4 * math.sqrt(rate * (1 - rate) / n), null.mean()
  np.testing.assert_array_equal(labels[~null], np.asarray(batch['label'])[~null])
  # Evaluation: labels as they are.
  losses.get_loss_fn(sde, _recording_apply_fn(sde, seen), continuous=kind == 'sde',
                     num_classes=7)(None, batch, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(seen[-1], batch['label'])
  with pytest.raises(ValueError, match="'image', 'label'"):
    loss_fn(None, batch['image'], jax.random.PRNGKey(0))


def test_unconditional_objective_is_unchanged():
  """num_classes=0: labels in the batch are ignored, and the loss draws t, z and the dropout
  key as it always did (split(rng, 3)), so its values are those of earlier versions."""
  seen = []
  apply_fn = _recording_apply_fn(VE, seen)
  x = jax.random.normal(jax.random.PRNGKey(1), (64, 3))
  rng = jax.random.PRNGKey(2)
  loss_fn = jax.jit(losses.get_loss_fn(VE, apply_fn, continuous=True))
  plain = loss_fn(None, x, rng)
  assert loss_fn(None, {'image': x, 'label': jnp.zeros(64, jnp.int32)}, rng) == plain
  assert seen == [None, None]  # traced twice: the network never saw class labels

  @jax.jit
  def expected(x, rng):
    t_rng, z_rng, _ = jax.random.split(rng, 3)
    t = jax.random.uniform(t_rng, (64,), minval=1e-5, maxval=1.0)
    z = jax.random.normal(z_rng, x.shape)
    std = VE.marginal_prob(x, t)[1]
    score = -(x + std[:, None] * z)
    return jnp.mean(0.5 * jnp.sum(jnp.square(std[:, None] * score + z), axis=-1))

  np.testing.assert_allclose(plain, expected(x, rng), rtol=1e-6)


# ----------------------------------------------------------------------------------------
# Configs


def _digits(**overrides):
  config = configs.load_config(os.path.join(ROOT, 'configs/ve/digits.py'))
  return set_keys(config, {
      'model.nf': 8, 'model.ch_mult': (1,), 'model.num_res_blocks': 1,
      'model.attn_resolutions': (), 'model.num_scales': 10, 'training.batch_size': 8,
      # Stopped after 2 steps, before the first evaluation: one program to compile.
      'training.n_iters': 4, 'training.n_jitted_steps': 1, 'training.log_freq': 1,
      'training.eval_freq': 4, 'training.snapshot_freq': 4,
      'training.snapshot_freq_for_preemption': 4, 'training.snapshot_sampling': False,
      'eval.batch_size': 8, **overrides})


def test_conditional_digits_config_reaches_training_and_sampling():
  """config.model.num_classes=10 on the digits: the training step takes the run's labelled
  batches and the sampler's score the config's classes and guidance scale. Traced, not
  compiled (a real two-step run compiles for most of a minute on a 2-core CPU; the networks'
  use of the labels is checked above)."""
  config = _digits(**{'model.num_classes': 10, 'sampling.guidance_scale': 2.0,
                      'sampling.class_label': 3})
  sde = setup.get_sde(config)
  model, template = setup.model_and_template(config)
  assert template.params['class_embed']['embedding'].shape == (11, 32)
  assert setup.label_dropout(config, model, train=True) == 0.1
  assert setup.label_dropout(config, model, train=False) == 0.0

  # What run.train's next_batch shards: scaled images and the labels, [n_jitted, B, ...].
  batch = setup.get_batch_fn(config, model)(next(data.get_dataset(config, 'train')))
  assert batch['image'].shape == (1, 8, 8, 8, 1) and batch['label'].shape == (1, 8)
  assert batch['label'].min() >= 0 and batch['label'].max() < 10
  step = losses.get_multi_step_fn(losses.get_step_fn(
      setup.get_loss_fn(config, sde, model, train=True), setup.get_optimizer(config), 0.99))
  state, metrics = jax.eval_shape(step, template, batch)
  assert metrics['loss'].shape == (1,)
  assert state.params['class_embed']['embedding'].shape == (11, 32)

  score_fn = setup.get_score_fn(config, sde, model, template.params)
  assert score_fn.func.guidance_scale == 2.0
  np.testing.assert_array_equal(score_fn.keywords['class_labels'], [3])
  out = jax.eval_shape(lambda f, x, t: f(x, t), score_fn, jnp.zeros((5, 8, 8, 1)), jnp.ones(5))
  assert out.shape == (5, 8, 8, 1)
  balanced = setup.get_score_fn(set_keys(config, {'sampling.class_label': -1}), sde, model,
                                template.params)
  np.testing.assert_array_equal(balanced.keywords['class_labels'], np.arange(10))
  # Arguments over the config's (Pretrained.guided_score_fn).
  override = setup.get_score_fn(config, sde, model, template.params, [1, 2], 0.5)
  assert override.func.guidance_scale == 0.5
  np.testing.assert_array_equal(override.keywords['class_labels'], [1, 2])
  with pytest.raises(errors.ArgumentError, match='class_labels'):
    setup.get_score_fn(config, sde, model, template.params, class_labels=11)
  # Likelihoods: the null class, p_t(x).
  marginal = setup.get_score_fn(config, sde, model, template.params, unconditional=True)
  assert marginal.keywords == {} and marginal.func.guidance_scale == 0.0


@pytest.mark.parametrize('overrides, message', [
    ({'sampling.guidance_scale': 1.0}, 'need a class-conditional model'),
    ({'sampling.class_label': 2}, 'need a class-conditional model'),
    ({'model.num_classes': 10, 'sampling.class_label': 10}, 'class_label=10'),
    ({'model.num_classes': 10, 'training.label_dropout': 1.5}, 'label_dropout=1.5'),
    ({'model.num_classes': 10, 'model.conditional': False}, 'config.model.num_classes=10 '
     'needs conditional=True'),
])
def test_config_mistakes_are_one_line_errors(tmp_path, overrides, message):
  with pytest.raises(errors.ConfigError, match=message):
    train.train(_digits(**overrides), str(tmp_path / 'run'), max_steps=1)
  assert not (tmp_path / 'run' / 'config.json').exists()


def test_data_without_fitting_labels_is_a_config_error(tmp_path):
  """Checked on the first batch, before the workdir records the config."""
  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(12):  # unlabelled: every image directly in the folder
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), 'L').save(images / f'{i}.png')
  config = _digits(**{'model.num_classes': 10, 'data.dataset': 'FOLDER',
                      'data.path': str(images)})
  with pytest.raises(errors.ConfigError, match='no class labels'):
    train.train(config, str(tmp_path / 'unlabelled'), max_steps=1)
  assert not (tmp_path / 'unlabelled' / 'config.json').exists()
  with pytest.raises(errors.ConfigError, match='num_classes=5 classes'):
    train.train(_digits(**{'model.num_classes': 5}), str(tmp_path / 'five'), max_steps=1)
