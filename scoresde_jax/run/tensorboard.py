"""TensorBoard event files written with the `tensorboard` package alone: no TensorFlow, no clu.

Importing TensorFlow (which clu's writers do) costs seconds at every start; the protos and
the record framing of the `tensorboard` package take half a second. Only local directories
(the work directory's file system), as the rest of the run layer.

What the writer records, and where TensorBoard shows it:

  * `write_scalars(step, {name: float})`: float32 scalar tensors with the scalars plugin's
    metadata (what `tf.summary.scalar` writes): the Scalars dashboard.
  * `write_images(step, {name: image(s)})`: PNG-encoded `Summary.Image` values (the Images
    dashboard). An image `[H, W, C]` is one image tagged `name`; a batch `[N, H, W, C]` is N
    images tagged `name/0` ... `name/{N-1}` (tf.compat.v1.summary.image's one image per
    tag; the caller tiles a grid first when it wants one picture, as the training
    snapshots do). uint8 pixels as they are, floats in [0, 1] rounded to uint8; C is 1, 3
    or 4.
  * `write_text(step, {name: str})`: the Text dashboard (markdown).
  * `write_hparams({name: value})`: the hparams plugin's session-start summary (the HParams
    dashboard), values bool, int, float or str (anything else as its str).

Each call appends its records and flushes the file, so a running TensorBoard sees them at
once and a killed run loses nothing written. `create_writer(logdir, active=False)` (every
process but the first in a multi-host run) is a `NullWriter`: the same methods, no files.
"""
from __future__ import annotations

import io
import itertools
import os
import socket
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.plugins.text import summary_v2 as text_summary
# RecordWriter frames records (length, masked CRC32C) in plain Python; EventFileWriter is not
# used because it creates its directory through `tensorboard.compat.tf`, which imports
# TensorFlow when it is installed.
from tensorboard.summary.writer.record_writer import RecordWriter

_FILE_COUNTER = itertools.count()


def _to_uint8(image) -> np.ndarray:
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  if image.dtype.kind != 'f':
    raise ValueError(f'Images must be uint8 or floats in [0, 1], not {image.dtype}.')
  # Rounded as `run.images.to_uint8` (and torchvision) does, so TensorBoard and the PNG
  # files show the same pixels.
  return np.clip(image.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def encode_image(image) -> summary_pb2.Summary.Image:
  """`image: [H, W, C]` (C = 1, 3 or 4), uint8 or floats in [0, 1] -> a PNG Summary.Image."""
  pixels = _to_uint8(image)
  if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3, 4):
    raise ValueError(f'An image is [H, W, C] with C in (1, 3, 4), not {pixels.shape}.')
  height, width, channels = pixels.shape
  buffer = io.BytesIO()
  Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buffer, format='PNG')
  # colorspace: 1 grayscale, 3 RGB, 4 RGBA (the Summary.Image convention).
  return summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                   encoded_image_string=buffer.getvalue())


def _hparam_value(value):
  if isinstance(value, np.generic):
    value = value.item()
  return value if isinstance(value, (bool, int, float, str)) else str(value)


class SummaryWriter:
  """Appends TensorBoard events to LOGDIR/events.out.tfevents.<time>.<host>.<pid>.<n>.

  A new file per writer (a resumed run adds one; TensorBoard reads all of a directory's
  files in name order as one run). Use as a context manager or call `close()`.
  """

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_FILE_COUNTER)}')
    self.path = os.path.join(logdir, name)
    self._records = RecordWriter(open(self.path, 'wb'))  # pylint: disable=consider-using-with
    # The first record of every event file: its format version (as TensorFlow writes it).
    self._write(event_pb2.Event(wall_time=time.time(), file_version='brain.Event:2'))
    self.flush()

  def _write(self, event: event_pb2.Event):
    self._records.write(event.SerializeToString())

  def _write_summary(self, step: int, summary: summary_pb2.Summary):
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self.flush()

  def write_scalars(self, step: int, scalars: dict):
    """`scalars: {name: number}` at `step` (one event)."""
    summary = summary_pb2.Summary()
    for name, value in scalars.items():
      summary.value.extend(scalar_summary.scalar_pb(name, float(value)).value)
    self._write_summary(step, summary)

  def write_images(self, step: int, images: dict):
    """`images: {name: [H, W, C] or [N, H, W, C]}`, uint8 or floats in [0, 1] (see the module
    docstring for the tags)."""
    summary = summary_pb2.Summary()
    for name, value in images.items():
      value = np.asarray(value)
      if value.ndim == 3:
        summary.value.add(tag=name, image=encode_image(value))
      elif value.ndim == 4:
        for i, image in enumerate(value):
          summary.value.add(tag=f'{name}/{i}', image=encode_image(image))
      else:
        raise ValueError(f'images[{name!r}] is [H, W, C] or [N, H, W, C], not {value.shape}.')
    self._write_summary(step, summary)

  def write_text(self, step: int, texts: dict):
    """`texts: {name: str}` (markdown) at `step`."""
    summary = summary_pb2.Summary()
    for name, text in texts.items():
      summary.value.extend(text_summary.text_pb(name, str(text)).value)
    self._write_summary(step, summary)

  def write_hparams(self, hparams: dict):
    """The run's hyperparameters (a flat dict) for the HParams dashboard, at step 0."""
    values = {str(k): _hparam_value(v) for k, v in hparams.items()}
    self._write_summary(0, hparams_summary.hparams_pb(values))

  def flush(self):
    if not self._records.closed:
      self._records.flush()

  def close(self):
    if not self._records.closed:
      self._records.flush()
      self._records.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class NullWriter:
  """SummaryWriter's methods, writing nothing (the processes other than the first)."""

  def write_scalars(self, step, scalars):
    pass

  def write_images(self, step, images):
    pass

  def write_text(self, step, texts):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    pass


def create_writer(logdir: str, active: bool = True) -> SummaryWriter | NullWriter:
  """A SummaryWriter of `logdir`, or a NullWriter where `active` is False."""
  return SummaryWriter(logdir) if active else NullWriter()
