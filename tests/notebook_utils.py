"""Running the notebooks of notebooks/ with a real Jupyter kernel (nbclient), small.

A notebook's parameters are the cell tagged `parameters`; `inject_parameters` inserts a cell
right after it (tagged `injected-parameters`, papermill's convention) that reassigns some of
them, so the notebook runs with tiny sizes without editing its own cells.

The kernel is this interpreter (`sys.executable`): `kernel_spec` installs a kernelspec under
a temporary prefix, found through JUPYTER_PATH, with a name of its own, so no other Jupyter
installation's 'python3' kernel can be picked up. Its environment pins JAX to the CPU;
`execute_all` adds per-notebook variables (e.g. XLA_FLAGS for several host devices).
"""
from __future__ import annotations

import ast
import asyncio
import contextlib
import copy
import os
import time

import nbformat

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(ROOT, 'notebooks')
KERNEL_NAME = 'scoresde-jax-notebook-tests'
# Set in every kernel, over the test process's environment.
KERNEL_ENV = {'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '2'}


def read_notebook(name: str) -> nbformat.NotebookNode:
  return nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)


def parameters_index(nb) -> int:
  """Index of the one cell tagged 'parameters' (ValueError when there is not exactly one)."""
  found = [i for i, cell in enumerate(nb.cells)
           if 'parameters' in cell.get('metadata', {}).get('tags', [])]
  if len(found) != 1:
    raise ValueError(f'expected exactly one cell tagged "parameters", found {len(found)}')
  return found[0]


def inject_parameters(nb, params: dict) -> nbformat.NotebookNode:
  """A copy of `nb` with a cell assigning `params` (as Python literals) after its parameters."""
  nb = copy.deepcopy(nb)
  for name, value in params.items():
    if not name.isidentifier():
      raise ValueError(f'parameter name {name!r} is not an identifier')
    try:
      literal = ast.literal_eval(repr(value))
    except (ValueError, SyntaxError):
      literal = None
    if literal != value:
      raise ValueError(f'parameter {name}={value!r} has no Python literal form')
  source = '# Parameters injected by tests/notebook_utils.py\n' + '\n'.join(
      f'{name} = {value!r}' for name, value in params.items())
  cell = nbformat.v4.new_code_cell(source)
  cell.metadata['tags'] = ['injected-parameters']
  nb.cells.insert(parameters_index(nb) + 1, cell)
  for i, c in enumerate(nb.cells):  # unique ids after the insertion
    c['id'] = f'cell-{i:02d}'
  return nb


@contextlib.contextmanager
def kernel_spec(tmp_dir: str):
  """Installs a kernelspec running `sys.executable` and points JUPYTER_PATH at it."""
  from ipykernel import kernelspec  # pylint: disable=import-outside-toplevel
  kernelspec.install(kernel_name=KERNEL_NAME, display_name='scoresde_jax tests',
                     prefix=tmp_dir, env=KERNEL_ENV)
  saved = os.environ.get('JUPYTER_PATH')
  os.environ['JUPYTER_PATH'] = os.pathsep.join(
      [os.path.join(tmp_dir, 'share', 'jupyter')] + ([saved] if saved else []))
  try:
    yield KERNEL_NAME
  finally:
    if saved is None:
      os.environ.pop('JUPYTER_PATH', None)
    else:
      os.environ['JUPYTER_PATH'] = saved


def cell_seconds(nb) -> list[tuple[int, float]]:
  """(cell index, seconds) of each executed code cell, from nbclient's timing metadata."""
  from datetime import datetime  # pylint: disable=import-outside-toplevel
  out = []
  for i, cell in enumerate(nb.cells):
    timing = cell.get('metadata', {}).get('execution', {})
    if 'iopub.execute_input' in timing and 'shell.execute_reply' in timing:
      parse = lambda s: datetime.fromisoformat(s.replace('Z', '+00:00'))
      out.append((i, (parse(timing['shell.execute_reply'])
                      - parse(timing['iopub.execute_input'])).total_seconds()))
  return out


async def _execute(nb, kernel_name: str, timeout: int, env: dict):
  from nbclient import NotebookClient  # pylint: disable=import-outside-toplevel
  client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                          resources={'metadata': {'path': NOTEBOOK_DIR}})
  start = time.time()
  await client.async_execute(env={**os.environ, **env})
  return nb, time.time() - start


def execute_all(notebooks: list, kernel_name: str, envs: list, timeout: int = 300) -> list:
  """Executes the notebooks concurrently, one kernel each (`envs[i]`: extra environment
  variables of notebook i), with `timeout` seconds per cell.

  Returns, per notebook, (executed notebook, seconds) or the exception that stopped it
  (nbclient's CellExecutionError carries the failing cell's traceback).
  """
  async def run():
    return await asyncio.gather(*[_execute(nb, kernel_name, timeout, env)
                                  for nb, env in zip(notebooks, envs)], return_exceptions=True)

  return asyncio.run(run())
