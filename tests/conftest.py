"""Test-session setup: one persistent XLA compilation cache per test run.

Many tests compile the same programs: the digits network's training step in several runs,
in this process and in the `main.py` and notebook subprocesses they start. A cache directory
shared by the pytest workers and, through the environment, by their subprocesses makes each
such program compile once per run. The cache key is the program and the compiler options, so
results are the same as without it. The directory is removed when the run ends.

Compilation itself is made cheap for tests (tests/xla_test_flags.py).
"""
import os
import shutil
import tempfile

from xla_test_flags import FAST_COMPILE

_RUN = os.environ.get('PYTEST_XDIST_TESTRUNUID') or str(os.getpid())
CACHE_DIR = os.path.join(tempfile.gettempdir(), f'scoresde_jax_tests_xla_cache_{_RUN}')
# Set before JAX is imported (the test modules import it), here and in every subprocess.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', CACHE_DIR)
if FAST_COMPILE not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()


def pytest_sessionfinish(session):
  if not hasattr(session.config, 'workerinput'):  # the controller, after its workers
    shutil.rmtree(CACHE_DIR, ignore_errors=True)

