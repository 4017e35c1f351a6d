"""Atomic file writes: readers, and a run killed mid-write, see the old file or the whole new
one (a temporary file in the same directory, then `os.replace`)."""
from __future__ import annotations

import io
import json
import os

import numpy as np


def write_atomic(path: str, data: bytes):
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'wb') as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str, obj):
  write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def write_npz(path: str, **arrays):
  """A compressed .npz of `arrays`."""
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  write_atomic(path, buffer.getvalue())
