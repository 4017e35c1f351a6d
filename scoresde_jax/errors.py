"""Mistakes in the user's input, the only exceptions `main.py` reports as one line.

Each type names what the user got wrong (a config value, a dataset, a checkpoint, weights
files, statistics files, a run that diverged) and carries a message that says how to fix
it. `main.py` prints `error: <message>` and exits with status 2; every other exception is a
bug and keeps its traceback.

Library functions raise `ValueError` for bad argument values, an `ArgumentError` where the
message names the argument; the run layer turns those it gets from config values into a
`ConfigError` naming the config key (`config_errors`).

Each type also derives from the built-in exception that callers used to catch (ValueError,
FileNotFoundError, RuntimeError), so `except ValueError` around a config check still works.
"""
from __future__ import annotations

import contextlib
import pickle
from typing import Mapping


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


class WeightsMismatchError(WeightsError, ValueError):
  """A weights file whose content is not the expected network's: another network (the
  message names the first tensor that does not fit) or a corrupt download."""


class StatsNotFoundError(UserError, FileNotFoundError):
  """No reference statistics for FID: `--mode fid_stats` has to run first."""


class TrainingDivergedError(UserError, RuntimeError):
  """The loss became NaN or Inf; the last checkpoint is intact."""


class ArgumentError(ValueError):
  """A value a library function or network cannot work with, naming its argument (or field).

  Not a user error by itself: the caller knows where the value came from. The message is a
  `str.format` template of `{name}`; `naming(key)` is the same message naming the value by
  the caller's name for it (a config key) instead of `argument`.
  """

  def __init__(self, argument: str, template: str, **values):
    self.argument = argument
    self._template, self._values = template, values
    super().__init__(self.naming(argument))

  def naming(self, name: str) -> str:
    return self._template.format(name=name, **self._values)


@contextlib.contextmanager
def config_errors(keys: Mapping[str, str] | None = None, where: str | None = None):
  """Turns the ValueErrors of library code given config values into ConfigErrors.

  An ArgumentError about an argument of `keys` (argument -> config key) is re-raised naming
  the key; with `where` (a config key or section), any other ValueError becomes a ConfigError
  ending in `(where)`. Other exceptions, and UserErrors, pass unchanged.
  """
  try:
    yield
  except UserError:
    raise
  except ArgumentError as e:
    if keys and e.argument in keys:
      raise ConfigError(e.naming(keys[e.argument])) from e
    if where is None:
      raise
    raise ConfigError(f'{e} ({where})') from e
  except ValueError as e:
    if where is None:
      raise
    raise ConfigError(f'{e} ({where})') from e
