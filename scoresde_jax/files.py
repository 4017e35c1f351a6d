"""Atomic file writes: readers, and a run killed mid-write, see the old file or the whole new
one (a temporary file in the same directory, then `os.replace`)."""
from __future__ import annotations

import io
import json
import os

import numpy as np


def write_atomic(path: str, data: bytes):
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):  # e.g. a full disk: the old file stays, no stray half copy
      os.remove(tmp)
    raise


def write_json(path: str, obj):
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_npz(path: str, compressed: bool = True, **arrays):
  """An .npz of `arrays` at `path` (exactly that name: np.savez would append '.npz')."""
  buffer = io.BytesIO()
  (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
  write_atomic(path, buffer.getvalue())
