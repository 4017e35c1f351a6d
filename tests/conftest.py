"""Test-session setup: one persistent XLA compilation cache per test run.

Many tests compile the same programs: the digits network's training step in several runs,
in this process and in the `main.py` and notebook subprocesses they start. A cache directory
shared by the pytest workers and, through the environment, by their subprocesses makes each
such program compile once per run. The cache key is the program and the compiler options, so
results are the same as without it. The directory is removed when the run ends.
"""
import os
import shutil
import tempfile

_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID') or str(os.getpid())
CACHE_DIR = os.path.join(tempfile.gettempdir(), f'scoresde_jax_tests_xla_cache_{_RUN}')
# Set before JAX is imported (the test modules import it), here and in every subprocess.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', CACHE_DIR)


def pytest_sessionfinish(session):
  if not hasattr(session.config, 'workerinput'):  # the controller, after its workers
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


# The modules that hold the long tests (whole training runs, notebooks, subprocesses), run
# first: with `--dist worksteal` (README's test command) the other worker fills in with the
# short ones, and the run does not end on one long test while a worker idles. Whole modules
# move, so module-scoped fixtures are still set up once per worker.
_LONG_FIRST = ('test_notebooks.py', 'test_train.py', 'test_sampler_paths.py',
               'test_pretrained.py', 'test_classifier.py', 'test_evaluate.py')


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within
