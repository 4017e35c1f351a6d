"""The restricted `torch.save` reader: what real checkpoints hold loads, nothing else does.

Real score_sde_pytorch checkpoints hold numpy scalars in the optimizer state (the warm-up
writes a `numpy.float64` learning rate), which pickle as `numpy._core.multiarray.scalar`
(numpy 2) or `numpy.core.multiarray.scalar` (numpy 1.x) of a `numpy.dtype` and its bytes,
the bytes as `_codecs.encode(text, 'latin1')` under torch.save's protocol 2. The hostile
pickles below each try one way to stretch those globals.
"""
import pickle
import zipfile

import numpy as np
import pytest

from scoresde_jax import torch_pickle
from scoresde_jax.errors import UnsafeCheckpointError


def _write_zip(path, payload: bytes):
  """A torch zip checkpoint whose data.pkl is `payload`."""
  with zipfile.ZipFile(path, 'w') as zf:
    zf.writestr('archive/data.pkl', payload)
    zf.writestr('archive/version', '3\n')
  return path


def _legacy_header():
  return b''.join(pickle.dumps(v, protocol=2)
                  for v in (0x1950a86a20f9469cfc6c, 1001, {'little_endian': True}))


def _write_legacy(path, payload: bytes):
  # Main pickle, then the (empty) list of storage keys.
  path.write_bytes(_legacy_header() + payload + pickle.dumps([], protocol=2))
  return path


SCALARS = [np.float64(0.000123), np.float32(-2.5), np.float16(0.1), np.int64(-7),
           np.int8(5), np.uint16(65535), np.uint8(3), np.bool_(True), np.complex64(1 - 2j),
           np.complex128(3 + 4j), np.dtype('>f8').type(1.5)]


@pytest.mark.parametrize('protocol', [2, 4])
@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_numeric_numpy_scalars_load_exactly(tmp_path, protocol, layout):
  tree = {'param_groups': [{'lr': np.float64(2e-4) * np.minimum(3 / 5000, 1.0),
                            'betas': (0.9, 0.999), 'params': [0, 1]}],
          'scalars': SCALARS, 'dtype': np.dtype('int32')}
  payload = pickle.dumps(tree, protocol=protocol)
  path = tmp_path / 'opt.pth'
  (_write_zip if layout == 'zip' else _write_legacy)(path, payload)
  got = torch_pickle.load(path)
  lr = got['param_groups'][0]['lr']
  assert type(lr) is np.float64 and lr == tree['param_groups'][0]['lr']
  assert got['param_groups'][0]['betas'] == (0.9, 0.999)
  for want, have in zip(SCALARS, got['scalars']):
    assert have.dtype == want.dtype.newbyteorder('=') and have == want, (want, have)
  assert got['dtype'] == np.dtype('int32')


def test_numpy1_module_name(tmp_path):
  payload = pickle.dumps({'lr': np.float64(0.25)}, protocol=2)
  assert b'numpy._core.multiarray\nscalar' in payload
  payload = payload.replace(b'numpy._core.multiarray\nscalar', b'numpy.core.multiarray\nscalar')
  assert torch_pickle.load(_write_zip(tmp_path / 'np1.pth', payload)) == {'lr': 0.25}


def _refused(tmp_path, payload, match):
  with pytest.raises(UnsafeCheckpointError, match=match):
    torch_pickle.load(_write_zip(tmp_path / 'hostile.pth', payload))


F8 = pickle.dumps(np.float64(1.0), protocol=2)


def test_refuses_object_and_other_non_numeric_dtypes(tmp_path):
  for spec in (b'O8', b'V8', b'M8', b'U2'):
    payload = F8.replace(b"X\x02\x00\x00\x00f8", b"X\x02\x00\x00\x00" + spec)
    _refused(tmp_path, payload, f'dtype {spec.decode()!r}')
  # A dtype string numpy cannot even parse.
  payload = F8.replace(b"X\x02\x00\x00\x00f8", b"X\x02\x00\x00\x00zz")
  _refused(tmp_path, payload, "unknown numpy dtype 'zz'")


def test_refuses_structured_dtype_state(tmp_path):
  # The BUILD state of a structured dtype names fields: (3, '|', None, names, fields, ...).
  plain = b'K\x03X\x01\x00\x00\x00<q\x05NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t'
  assert plain in F8
  structured = (b'K\x03X\x01\x00\x00\x00<q\x05NX\x01\x00\x00\x00a\x85}'
                b'NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t')
  _refused(tmp_path, F8.replace(plain, structured), 'dtype state')


def test_refuses_wrong_byte_length(tmp_path):
  eight = '\x00\x00\x00\x00\x00\x00\xf0?'.encode('utf-8')
  assert b'X\x09\x00\x00\x00' + eight in F8  # 'ð' is two bytes in UTF-8
  payload = F8.replace(b'X\x09\x00\x00\x00' + eight, b'X\x04\x00\x00\x00abcd')
  _refused(tmp_path, payload, '4 bytes')


def test_refuses_codecs_encode_other_uses(tmp_path):
  # Another encoding.
  _refused(tmp_path, F8.replace(b'latin1', b'utf_32'), "'utf_32'")
  # Bytes that do not become a scalar.
  payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x06\x00\x00\x00latin1\x86R."
  _refused(tmp_path, payload, 'outside a numpy scalar')


def test_refuses_scalar_of_anything_but_a_dtype(tmp_path):
  payload = (b"\x80\x02cnumpy._core.multiarray\nscalar\nX\x02\x00\x00\x00f8"
             b"C\x08\x00\x00\x00\x00\x00\x00\xf0?\x86R.")
  _refused(tmp_path, payload, r'numpy scalar from \(str, bytes\)')


def test_refuses_numpy_arrays_and_other_numpy_globals(tmp_path):
  # An ndarray pickles through numpy's _reconstruct, which stays refused.
  for name in ('numpy._core.multiarray', 'numpy.core.multiarray'):
    payload = pickle.dumps(np.arange(3.0), protocol=2).replace(
        b'numpy._core.multiarray\n_reconstruct', name.encode() + b'\n_reconstruct')
    _refused(tmp_path, payload, rf'global {name}\._reconstruct')
  _refused(tmp_path, F8.replace(b'numpy._core.multiarray\nscalar', b'numpy\nload'),
           r'global numpy\.load')
  _refused(tmp_path, F8.replace(b'c_codecs\nencode', b'c_codecs\ndecode'),
           r'global _codecs\.decode')
