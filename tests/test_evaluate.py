"""The evaluation run (`--mode eval|sample|fid_stats`) on a tiny checkpoint, on CPU.

A tiny NCSN++ (nf 8, one resolution, 8x8 digits, 10 noise scales) is saved as snapshot 1 of a
work directory; the Inception network has random weights (made with numpy from a seed, so no
weights file is needed). Values are checked against independent computations: Inception
features of the saved samples / of the digits read straight from scikit-learn, and
scipy's `sqrtm` for FID.
"""
import csv
import json
import os

import jax
import numpy as np
import pytest
import scipy.linalg

from configs import load_config
from scoresde_jax import checkpoints, datasets
from scoresde_jax.evaluation import fid as fid_lib
from scoresde_jax.evaluation import inception, metrics
from scoresde_jax import errors
from scoresde_jax.run import eval_likelihood, evaluate, sample, setup, stats, sweeps

SNAPSHOT_FREQ = 10


def tiny_config():
  config = load_config('configs/ve/digits.py')
  config.data.image_size = 8
  model = config.model
  model.nf, model.ch_mult, model.num_res_blocks, model.attn_resolutions = 8, (1,), 1, ()
  model.num_scales = 10
  config.training.batch_size = 8
  config.training.snapshot_freq = SNAPSHOT_FREQ
  e = config.eval
  e.batch_size, e.num_samples = 8, 8
  e.begin_ckpt, e.end_ckpt = 1, 2  # snapshot 2 (step 20) does not exist
  e.enable_loss, e.enable_bpd, e.enable_sampling = True, True, True
  e.bpd_num_repeats = 1
  e.bpd_num_batches = 1
  e.bpd_rtol = e.bpd_atol = 1e-3  # loose: a quick solve
  del e.sweep  # the defaults type it as a string ('' or 'table1'); here a list of settings
  e.sweep = [{'name': 'P10_reverse_diffusion', 'method': 'pc', 'predictor': 'reverse_diffusion',
              'corrector': 'none'}]
  return config


def random_inception_variables(seed=0):
  """Random Inception variables (He-scaled kernels, identity batch norm), numpy only (fast)."""
  rs = np.random.RandomState(seed)

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      return (rs.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
              ).astype(np.float32)
    if name.endswith("['scale']") or name.endswith("['var']"):
      return np.ones(leaf.shape, np.float32)
    # Small random biases/means so the logits differ between images.
    return (0.1 * rs.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, inception.variable_shapes())


def random_train_state(config, seed=0):
  """A TrainState of the config's structure with random EMA parameters (numpy, fast: a real
  initialization compiles the network). The training parameters are NaN, so results are
  finite only if evaluation uses the EMA parameters, as it must."""
  abstract = jax.eval_shape(lambda r: setup.create_train_state(config, r)[2],
                            jax.random.PRNGKey(0))
  rs = np.random.RandomState(seed)
  random = lambda leaf: (0.1 * rs.standard_normal(leaf.shape)).astype(leaf.dtype)
  return abstract.replace(
      step=np.asarray(SNAPSHOT_FREQ, np.int32),
      params=jax.tree_util.tree_map(lambda l: np.full(l.shape, np.nan, l.dtype), abstract.params),
      ema_params=jax.tree_util.tree_map(random, abstract.ema_params),
      opt_state=jax.tree_util.tree_map(lambda l: np.zeros(l.shape, l.dtype), abstract.opt_state),
      rng=np.asarray(jax.random.PRNGKey(0)))


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(config, workdir, inception variables, stats path) with snapshot 1 = step 10."""
  config = tiny_config()
  workdir = str(tmp_path_factory.mktemp('run'))
  state = random_train_state(config)
  ckpts = checkpoints.RunCheckpoints(workdir, asynchronous=False)
  ckpts.save(state, snapshot=True)
  ckpts.wait()
  ckpts.close()
  variables = random_inception_variables()
  stats_path = os.path.join(workdir, stats.stats_filename(config))
  stats.compute_dataset_stats(config, stats_path, inception_variables=variables, max_images=12)
  return config, workdir, variables, stats_path


def digits_pixels(indices, image_size=8):
  """uint8 RGB digits straight from scikit-learn (gray level / 16, rounded to 8 bits)."""
  from sklearn.datasets import load_digits
  x = load_digits().images[indices] / 16.0
  r = image_size // 8
  x = np.repeat(np.repeat(x, r, axis=1), r, axis=2)
  x = np.floor(x * 255.0 + 0.5).astype(np.uint8)
  return np.repeat(x[..., None], 3, axis=-1)


def test_dataset_stats_are_those_of_the_train_images(run):
  config, _, variables, stats_path = run
  train_idx, _ = datasets.digits_split_indices()
  pixels = digits_pixels(train_idx[:12])
  expected = fid_lib.compute_activations([pixels[:8], pixels[8:]], variables)['pool_3']
  with np.load(stats_path) as f:
    assert f['pool_3'].shape == (12, 2048) and int(f['num_images']) == 12
    np.testing.assert_allclose(f['pool_3'], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f['mu'], expected.astype(np.float64).mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(f['sigma'], np.cov(expected.astype(np.float64), rowvar=False),
                               rtol=1e-3, atol=1e-5)
    assert str(f['dataset']) == 'DIGITS' and int(f['image_size']) == 8
  # Statistics of another resolution are refused with a message.
  other = tiny_config()
  other.data.image_size = 16
  with pytest.raises(ValueError, match='image_size=16'):
    stats.load_stats(other, stats_path)


def test_low_rank_fid_equals_sqrtm_formula():
  rs = np.random.RandomState(1)
  d = 24
  ref = rs.standard_normal((300, d)) @ rs.standard_normal((d, d)) * 0.5 + 0.3
  mu_ref, sigma_ref = ref.mean(0), np.cov(ref, rowvar=False)
  for n in (5, d, 60):  # rank-deficient and full-rank sample covariances
    x = 2.0 * rs.standard_normal((n, d)) - 0.1
    mu, sigma = x.mean(0), np.cov(x, rowvar=False)
    covmean = scipy.linalg.sqrtm(sigma @ sigma_ref).real
    expected = np.sum((mu - mu_ref) ** 2) + np.trace(sigma + sigma_ref - 2 * covmean)
    np.testing.assert_allclose(metrics.fid_to_reference(x, mu_ref, sigma_ref), expected,
                               rtol=1e-6)


def test_eval_writes_results_and_a_rerun_skips_them(run, monkeypatch):
  config, workdir, variables, stats_path = run
  config = tiny_config()
  config.eval.stats_path = stats_path
  results = evaluate.evaluate(config, workdir, 'eval', inception_variables=variables)
  eval_dir = os.path.join(workdir, 'eval')
  setting = 'P10_reverse_diffusion'
  result_file = os.path.join(eval_dir, f'ckpt_1_{setting}.json')
  ckpt_file = os.path.join(eval_dir, 'ckpt_1.json')
  with open(result_file) as f:
    result = json.load(f)
  with open(ckpt_file) as f:
    ckpt_result = json.load(f)
  assert [r['setting'] for r in results] == [setting]
  assert result['ckpt'] == 1 and result['step'] == SNAPSHOT_FREQ
  for key in ('fid', 'is', 'kid', 'nfe', 'loss', 'bpd', 'wall_seconds'):
    assert np.isfinite(result[key]), key
  assert result['nfe'] == 10  # predictor only, 10 steps
  assert result['num_samples'] == 8
  # The whole eval split (180 digits): 23 batches, the padding of the last one masked out.
  assert ckpt_result['loss'] == result['loss'] and ckpt_result['loss_num_examples'] == 180
  assert ckpt_result['bpd_num_examples'] == 8 and 0 < ckpt_result['bpd'] < 100
  assert not os.path.exists(os.path.join(eval_dir, 'ckpt_2.json'))  # missing snapshot skipped

  # The metrics are those of the saved uint8 samples, recomputed independently.
  sample_dir = os.path.join(eval_dir, f'ckpt_1_{setting}')
  with np.load(os.path.join(sample_dir, 'samples_0_0.npz')) as f:
    samples = f['samples']
  assert samples.shape == (8, 8, 8, 1) and samples.dtype == np.uint8
  acts = fid_lib.compute_activations([np.repeat(samples, 3, axis=-1)], variables)
  with np.load(stats_path) as f:
    data_pool = f['pool_3']
  kid, _ = metrics.kernel_inception_distance(data_pool, acts['pool_3'])
  np.testing.assert_allclose(result['kid'], kid, rtol=1e-3, atol=1e-6)
  assert result['is_splits'] == 1  # 8 samples: one split
  is_mean, _ = metrics.inception_score(acts['logits'], 1)
  assert is_mean > 1.0 + 1e-6
  np.testing.assert_allclose(result['is'], is_mean, rtol=1e-4)
  mu_ref, sigma_ref = metrics.activation_statistics(data_pool)
  np.testing.assert_allclose(result['fid'],
                             metrics.fid_to_reference(acts['pool_3'], mu_ref, sigma_ref),
                             rtol=1e-3)

  # Summary tables, one row for snapshot 1.
  with open(os.path.join(eval_dir, 'summary.csv')) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1 and rows[0]['setting'] == setting and rows[0]['ckpt'] == '1'
  np.testing.assert_allclose(float(rows[0]['fid']), result['fid'])
  assert rows[0]['is_splits'] == '1'  # the table says which IS convention it reports
  with open(os.path.join(eval_dir, 'summary.md')) as f:
    assert setting in f.read()

  # A rerun does nothing: no sampling, no loss, no likelihood, files untouched.
  def forbidden(*args, **kwargs):
    raise AssertionError('recomputed a finished result')

  mtimes = {p: os.stat(p).st_mtime_ns for p in (result_file, ckpt_file)}
  monkeypatch.setattr(setup, 'get_sampler', forbidden)
  monkeypatch.setattr(eval_likelihood.LossEval, '__call__', forbidden)
  monkeypatch.setattr(eval_likelihood.BpdEval, '__call__', forbidden)
  again = evaluate.evaluate(config, workdir, 'eval', inception_variables=variables)
  assert again[0]['fid'] == result['fid']
  assert {p: os.stat(p).st_mtime_ns for p in mtimes} == mtimes

  # An interrupted setting (JSON not yet written) resumes from its saved rounds.
  os.remove(result_file)
  resumed = evaluate.evaluate(config, workdir, 'eval', inception_variables=variables)
  np.testing.assert_allclose(resumed[0]['fid'], result['fid'], rtol=1e-12)


def test_missing_stats_is_a_clear_error(run, tmp_path, monkeypatch):
  _, workdir, variables, _ = run
  config = tiny_config()
  monkeypatch.setenv(stats.STATS_DIR_ENV, str(tmp_path / 'nostats'))
  monkeypatch.chdir(tmp_path)  # no assets/stats here
  config.eval.stats_path = str(tmp_path / 'cifar_missing.npz')
  with pytest.raises(errors.StatsNotFoundError, match='--mode fid_stats'):
    evaluate.evaluate(config, workdir, 'eval_nostats', inception_variables=variables)
  assert not os.path.exists(os.path.join(workdir, 'eval_nostats'))


def test_stats_lookup_order(tmp_path, monkeypatch):
  config = tiny_config()
  monkeypatch.setenv(stats.STATS_DIR_ENV, str(tmp_path / 'cache'))
  monkeypatch.chdir(tmp_path)
  workdir = tmp_path / 'runs' / 'digits'
  workdir.mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match='digits_stats.npz'):
    stats.resolve_stats_path(config, str(workdir))
  parent_file = tmp_path / 'runs' / 'digits_stats.npz'
  parent_file.write_bytes(b'')
  assert stats.resolve_stats_path(config, str(workdir)) == str(parent_file)
  own_file = workdir / 'digits_stats.npz'
  own_file.write_bytes(b'')
  assert stats.resolve_stats_path(config, str(workdir)) == str(own_file)


def test_missing_checkpoints_are_a_clear_error(run):
  _, workdir, variables, _ = run
  config = tiny_config()
  config.eval.begin_ckpt, config.eval.end_ckpt = 3, 4
  with pytest.raises(checkpoints.CheckpointError,
                     match=r'3\.\.4 \(training steps 30\.\.40.*steps \[10\]'):
    evaluate.evaluate(config, workdir, 'eval_missing', inception_variables=variables)


def test_sample_mode_writes_grid_and_npz(run):
  config, workdir, _, _ = run
  config = tiny_config()
  config.sampling.corrector = 'none'
  out = sample.sample(config, workdir, 'eval_sample', num_samples=6)
  assert out['step'] == SNAPSHOT_FREQ and out['nfe'] == 10
  with np.load(out['npz']) as f:
    assert f['samples'].shape == (6, 8, 8, 1) and f['samples'].dtype == np.uint8
  from PIL import Image
  with Image.open(out['png']) as im:
    assert im.size[0] > 8 and im.size[1] > 8
  # One PNG per sample, the pixels of the .npz (what the FID command reads).
  assert sorted(os.listdir(out['folder'])) == [f'{i:06d}.png' for i in range(6)]
  with np.load(out['npz']) as f, Image.open(os.path.join(out['folder'], '000005.png')) as im:
    np.testing.assert_array_equal(np.asarray(im), f['samples'][5, ..., 0])


def test_paper_table1_sweep():
  config = tiny_config()
  config.model.num_scales = 1000
  names = [s['name'] for s in sweeps.paper_table1_sweep(config)]
  assert names == ['P1000_ancestral_sampling', 'P1000_reverse_diffusion', 'P1000_probability_flow',
                   'P2000_ancestral_sampling', 'P2000_reverse_diffusion', 'P2000_probability_flow',
                   'C2000', 'PC1000_ancestral_sampling', 'PC1000_reverse_diffusion',
                   'PC1000_probability_flow']
  del config.eval.sweep  # typed as a list by tiny_config
  config.eval.sweep = 'table1'
  sweep = {s['name']: s for s in sweeps.get_sweep(config)}
  assert sweep['C2000']['predictor'] == 'none' and sweep['C2000']['corrector'] == 'langevin'
  assert sweep['C2000']['num_scales'] == 2000
  assert sweep['PC1000_probability_flow']['probability_flow'] is True
  subvp = load_config('configs/subvp/digits.py')
  subvp_names = [s['name'] for s in sweeps.paper_table1_sweep(subvp)]
  assert not any('ancestral' in n for n in subvp_names) and len(subvp_names) == 7


def test_sweep_validation():
  config = tiny_config()
  del config.eval.sweep
  (default,) = sweeps.get_sweep(config)
  assert default['name'] == 'pc_reverse_diffusion_langevin'
  assert default['num_scales'] == 10
  config.eval.sweep = [{'name': 'a', 'predictor': 'nope'}]
  with pytest.raises(ValueError, match="Unknown predictor 'nope'"):
    sweeps.get_sweep(config)
  config.eval.sweep = [{'name': 'a/b'}]
  with pytest.raises(ValueError, match='file name'):
    sweeps.get_sweep(config)
  config.eval.sweep = [{'name': 'a'}, {'name': 'a', 'method': 'ode'}]
  with pytest.raises(ValueError, match='duplicate'):
    sweeps.get_sweep(config)
  config.eval.sweep = [{'name': 'a', 'predicter': 'euler_maruyama'}]
  with pytest.raises(ValueError, match='unknown keys'):
    sweeps.get_sweep(config)


def test_sweep_guidance_scale_is_validated_and_kept_apart_from_the_sampler():
  config = tiny_config()  # unconditional
  config.eval.sweep = [{'name': 'g', 'guidance_scale': 1.0}]
  with pytest.raises(errors.ConfigError, match='guidance_scale needs a class-conditional model'):
    sweeps.get_sweep(config)
  config.eval.sweep = [{'name': 'g', 'guidance_scale': 0}]
  assert 'guidance_scale' not in sweeps.get_sweep(config)[0]  # nothing to record

  config.model.num_classes = 10
  config.sampling.guidance_scale = 0.5
  config.eval.sweep = [{'name': 'w_default'}, {'name': 'w2', 'guidance_scale': 2}]
  default, guided = sweeps.get_sweep(config)
  assert default['guidance_scale'] == 0.5 and guided['guidance_scale'] == 2.0
  assert 'guidance_scale' not in sweeps.setting_overrides(guided)
  config.eval.sweep = [{'guidance_scale': 2}]
  with pytest.raises(errors.ConfigError, match='needs a name'):
    sweeps.get_sweep(config)
  config.eval.sweep = [{'name': 'w', 'guidance_scale': 'strong'}]
  with pytest.raises(errors.ConfigError, match="guidance_scale='strong' must be a number"):
    sweeps.get_sweep(config)


def test_eval_samples_each_setting_with_its_guidance_scale(tmp_path, monkeypatch):
  config = tiny_config()
  config.model.num_classes = 10
  config.eval.enable_loss = config.eval.enable_bpd = False
  config.eval.sweep = [{'name': f'w{w}', 'predictor': 'reverse_diffusion', 'corrector': 'none',
                        'num_scales': 2, 'guidance_scale': w} for w in (0, 3)]
  workdir = str(tmp_path)
  ckpts = checkpoints.RunCheckpoints(workdir, asynchronous=False)
  ckpts.save(random_train_state(config), snapshot=True)
  ckpts.wait()
  ckpts.close()
  variables = random_inception_variables()
  config.eval.stats_path = os.path.join(workdir, 'stats.npz')
  stats.compute_dataset_stats(config, config.eval.stats_path, inception_variables=variables,
                              max_images=12)
  scales = []
  get_score_fn = setup.get_score_fn

  def recording(*args, guidance_scale=None, **kwargs):
    scales.append(guidance_scale)
    return get_score_fn(*args, guidance_scale=guidance_scale, **kwargs)

  monkeypatch.setattr(setup, 'get_score_fn', recording)
  results = evaluate.evaluate(config, workdir, 'eval', inception_variables=variables)
  assert scales == [0.0, 3.0]
  assert [(r['setting'], r['sampler']['guidance_scale']) for r in results] == [('w0', 0.0),
                                                                              ('w3', 3.0)]
