"""Stored compiled programs (run.programs): what keys them, and what happens to a bad file.

That a resumed training run loads its stored step without tracing and ends bit for bit where
an uninterrupted run does is tested in test_train.py (the interrupted-and-resumed test)."""
import os

import jax
import jax.numpy as jnp
import numpy as np

import configs
from scoresde_jax import losses, parallel
from scoresde_jax.run import programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config():
  return configs.load_config(os.path.join(ROOT, 'configs/ve/digits.py'))


def step(state, x):
  return state.replace(step=state.step + 1, params=state.params * x), jnp.sum(x)


def small_state():
  return losses.TrainState(step=jnp.zeros((), jnp.int32), params=jnp.arange(3.0),
                           ema_params=jnp.ones(3), opt_state=(), rng=jax.random.PRNGKey(0))


def test_a_stored_program_computes_what_the_traced_one_does_and_gives_its_signature(tmp_path):
  path = str(tmp_path / 'step.bin')
  first = programs.Program(jax.jit(step, donate_argnums=0), path)
  assert not first.loaded and not os.path.exists(path)
  expected = first(small_state(), jnp.full(3, 2.0))
  assert os.path.exists(path)

  def untraceable(state, x):
    raise AssertionError('traced')

  second = programs.Program(jax.jit(untraceable, donate_argnums=0), path)
  assert second.loaded
  state_spec, x_spec = second.abstract_args()
  assert jax.tree_util.tree_structure(state_spec) == jax.tree_util.tree_structure(small_state())
  assert (state_spec.params.shape, state_spec.params.dtype) == ((3,), jnp.float32)
  assert (state_spec.step.shape, state_spec.step.dtype) == ((), jnp.int32)
  assert x_spec.shape == (3,) and x_spec.sharding is not None
  got = second(small_state(), jnp.full(3, 2.0))
  for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(got[0].params, [0.0, 2.0, 4.0])


def test_an_unreadable_file_is_reported_and_replaced(tmp_path, caplog):
  path = str(tmp_path / 'step.bin')
  with open(path, 'wb') as f:
    f.write(b'half a file')
  with caplog.at_level('WARNING'):
    program = programs.Program(jax.jit(step, donate_argnums=0), path)
  assert not program.loaded and 'Ignoring the stored program' in caplog.text
  program(small_state(), jnp.ones(3))
  assert programs.Program(jax.jit(step), path).loaded


def test_the_key_changes_with_what_changes_the_program(monkeypatch):
  mesh = parallel.make_mesh()
  config = digits_config()
  path = programs.program_path('/cache', 'train_step', config, mesh)
  assert path.startswith('/cache/train_step-') and path.endswith('.bin')
  assert programs.program_path('/cache', 'train_step', digits_config(), mesh) == path
  assert programs.program_path('/cache', 'eval_step', config, mesh) != path
  wider = digits_config()
  wider.model.nf *= 2
  assert programs.program_path('/cache', 'train_step', wider, mesh) != path
  faster = digits_config()
  faster.optim.lr *= 2  # a constant inside the compiled step
  assert programs.program_path('/cache', 'train_step', faster, mesh) != path
  flags = os.environ.get('XLA_FLAGS', '')
  monkeypatch.setenv('XLA_FLAGS', flags + ' --xla_cpu_enable_fast_math=true')
  assert programs.program_path('/cache', 'train_step', config, mesh) != path
  monkeypatch.setenv('XLA_FLAGS', flags)
  assert programs.program_path('/cache', 'train_step', config, mesh) == path
  monkeypatch.setattr(programs, '_source_digest', lambda: 'an edited network')
  assert programs.program_path('/cache', 'train_step', config, mesh) != path
  assert programs.program_path(None, 'train_step', config, mesh) is None


def test_no_store_on_many_hosts(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  assert programs.program_path('/cache', 'train_step', digits_config(),
                               parallel.make_mesh()) is None


def test_a_program_from_the_persistent_cache_is_not_stored(tmp_path, monkeypatch):
  """XLA:CPU re-serializes an executable loaded from JAX's cache into one that fails to run,
  so such a program is used, not stored."""
  path = str(tmp_path / 'step.bin')
  lower = jax.stages.Lowered.compile

  def compile_from_the_cache(lowered, *args, **kwargs):
    jax.monitoring.record_event('/jax/compilation_cache/cache_hits')
    return lower(lowered, *args, **kwargs)

  monkeypatch.setattr(jax.stages.Lowered, 'compile', compile_from_the_cache)
  program = programs.Program(jax.jit(step), path)
  np.testing.assert_array_equal(program(small_state(), jnp.ones(3))[1], 3.0)
  assert not os.path.exists(path)
