"""Mistakes in the user's input, the only exceptions `main.py` reports as one line.

Each type names what the user got wrong (a config value, a dataset, a checkpoint, weights
files, statistics files, a run that diverged) and carries a message that says how to fix
it. `main.py` prints `error: <message>` and exits with status 2; every other exception is a
bug and keeps its traceback. Library functions keep raising `ValueError` for bad argument
values; the run layer turns those it gets from config values into `ConfigError` naming the
key (`run.setup.config_errors`).

Each type also derives from the built-in exception that callers used to catch (ValueError,
FileNotFoundError, RuntimeError), so `except ValueError` around a config check still works.
"""
from __future__ import annotations

import pickle


class UserError(Exception):
  """A mistake in the input of a run, reported as one line."""


class ConfigError(UserError, ValueError):
  """A config value that cannot work; the message names the key."""


class WorkdirConfigMismatch(ConfigError):
  """The work directory holds a run of another config."""


class DatasetError(UserError, ValueError):
  """A dataset that cannot be read as configured."""


class DatasetNotFoundError(DatasetError):
  """The configured dataset is not prepared (or not where the config says)."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that is missing, unreadable or does not fit the config's network."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No checkpoint where the run looks for one (train first)."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
  """A pickle that references something other than tensors and plain containers."""


class WeightsError(UserError, FileNotFoundError):
  """Network weights (the Inception weights for FID) that are missing or unreadable."""


class StatsNotFoundError(UserError, FileNotFoundError):
  """No reference statistics for FID: `--mode fid_stats` has to run first."""


class TrainingDivergedError(UserError, RuntimeError):
  """The loss became NaN or Inf; the last checkpoint is intact."""
