"""Sharded over 8 (simulated) devices, samplers and the training step give the single-device
results; host batches become global arrays and come back to numpy in order, also on two hosts
(two processes on this machine). Runs in subprocesses because the device count is fixed when
JAX starts."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from scoresde_jax import parallel
from xla_test_flags import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import json
    import jax, jax.numpy as jnp, numpy as np
    from scoresde_jax import gmm, losses, parallel, sampling, sde_lib

    assert jax.device_count() == 8
    mesh = parallel.make_mesh()
    data, replicated = parallel.data_sharding(mesh), parallel.replicated(mesh)
    out = {}
    mix = gmm.random_mixture(0, 4, 3)
    sde = sde_lib.VPSDE(0.1, 20.0, 100)
    score = mix.score_fn(sde)
    key = jax.random.PRNGKey(0)

    # PC sampler with the Langevin corrector, whose step size averages norms over the batch.
    kw = dict(predictor='reverse_diffusion', corrector='langevin', snr=0.16)
    one, _ = sampling.get_pc_sampler(sde, (64, 4), **kw)(key, score)
    eight, _ = sampling.get_pc_sampler(sde, (64, 4), sharding=data, **kw)(key, score)
    out['pc_shards'] = len(eight.addressable_shards)
    out['pc_shard_shape'] = list(eight.addressable_shards[0].data.shape)
    out['pc_diff'] = float(jnp.abs(one - eight).max() / jnp.abs(one).max())

    one, nfe1 = sampling.get_ode_sampler(sde, (64, 4))(key, score)
    eight, nfe8 = sampling.get_ode_sampler(sde, (64, 4), sharding=data)(key, score)
    out['ode_diff'] = float(jnp.abs(one - eight).max() / jnp.abs(one).max())
    out['ode_nfe'] = [int(nfe1), int(nfe8)]

    # Training step: batch sharded, state replicated.
    def apply_fn(params, x, labels, rng):
        return jnp.tanh(x @ params['w'] + params['b']) * (1 + labels[:, None] / 999)
    loss_fn = losses.get_sde_loss_fn(sde, apply_fn)
    opt = losses.get_optimizer(1e-2, warmup=2, grad_clip=1.0)
    step = jax.jit(losses.get_multi_step_fn(losses.get_step_fn(loss_fn, opt, ema_rate=0.9)))
    params = {'w': jax.random.normal(jax.random.PRNGKey(1), (4, 4)) * 0.3, 'b': jnp.zeros(4)}
    state = losses.init_train_state(params, opt, jax.random.PRNGKey(2))
    batches = jax.random.normal(jax.random.PRNGKey(3), (3, 64, 4))
    s1, m1 = step(state, batches)
    s8, m8 = step(jax.device_put(state, replicated),
                  jax.device_put(batches, parallel.data_sharding(mesh, batch_axis=1)))
    out['loss'] = [np.asarray(m1['loss']).tolist(), np.asarray(m8['loss']).tolist()]
    out['param_diff'] = max(float(jnp.abs(a - b).max()) for a, b in
                            zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s8)))
    print('RESULT' + json.dumps(out))
''')


def _run_on_8_devices(script: str, timeout: int) -> subprocess.CompletedProcess:
  env = dict(os.environ, XLA_FLAGS=xla_flags(8),
             JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  return subprocess.run([sys.executable, '-c', script], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_eight_devices_match_one():
  proc = _run_on_8_devices(SCRIPT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  assert out['pc_shards'] == 8 and out['pc_shard_shape'] == [8, 4]
  # Relative differences: only the order of float32 reductions differs between the two.
  assert out['pc_diff'] < 1e-4, out  # 100 steps amplify the batch-norm rounding of Langevin
  assert out['ode_diff'] < 1e-5 and out['ode_nfe'][0] == out['ode_nfe'][1]
  losses_one, losses_eight = out['loss']
  assert all(abs(a - b) < 1e-5 * max(1.0, abs(a)) for a, b in zip(losses_one, losses_eight))
  assert out['param_diff'] < 1e-5, out


_SHARD_SCRIPT = textwrap.dedent('''
  import sys
  import jax
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
  import configs
  from scoresde_jax import parallel
  from scoresde_jax.run import data as run_data

  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()), ('data',))
  config = configs.load_config('configs/ve/digits.py')
  config.training.batch_size = 16
  config.training.n_jitted_steps = 2
  batch = next(run_data.get_dataset(config, 'train'))
  assert 'tensorflow' not in sys.modules  # digits never import TensorFlow

  out = parallel.shard_batch(batch, mesh)
  for key, axis in (('image', 1), ('label', 1)):
    arr = out[key]
    assert arr.shape == batch[key].shape, (arr.shape, batch[key].shape)
    shards = sorted(arr.addressable_shards, key=lambda s: s.index[axis].start)
    assert len(shards) == 8 and len({s.device for s in shards}) == 8
    assert all(s.data.shape[axis] == 2 for s in shards)
    np.testing.assert_array_equal(np.concatenate([np.asarray(s.data) for s in shards], axis),
                                  batch[key])
    np.testing.assert_array_equal(np.asarray(arr), batch[key])

  single = {k: v[0] for k, v in batch.items()}  # no fused-steps axis: batch axis 0
  arr = parallel.shard_batch(single, mesh)['image']
  shards = sorted(arr.addressable_shards, key=lambda s: s.index[0].start)
  assert len(shards) == 8
  np.testing.assert_array_equal(np.concatenate([np.asarray(s.data) for s in shards]),
                                single['image'])
  arr = parallel.shard_batch(batch['image'], NamedSharding(mesh, P(None, 'data')))
  assert len(arr.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(arr), batch['image'])

  # Back to numpy: one host holds every row, in order; it keeps a replicated array whole.
  rows = parallel.shard_batch(single, mesh)['label']
  np.testing.assert_array_equal(parallel.host_local(rows), single['label'])
  np.testing.assert_array_equal(parallel.allgather_rows(parallel.host_local(rows)),
                                single['label'])
  whole = jax.device_put(single['label'], parallel.replicated(mesh))
  np.testing.assert_array_equal(parallel.host_local(whole), single['label'])

  try:
    parallel.shard_batch(np.zeros((12, 4, 4, 1), np.float32), mesh)
    raise SystemExit('no error for 12 examples on 8 devices')
  except ValueError as e:
    assert 'not divisible by the 8 devices' in str(e), e
  config.training.batch_size = 12
  try:
    run_data.get_dataset(config, 'train')
    raise SystemExit('no error for batch size 12 on 8 devices')
  except ValueError as e:
    assert 'training.batch_size=12 is not divisible by the 8 devices' in str(e), e
  print('OK')
''')


def test_shard_batch_over_8_devices():
  proc = _run_on_8_devices(_SHARD_SCRIPT, timeout=300)
  assert proc.returncode == 0 and proc.stdout.strip().endswith('OK'), proc.stderr[-3000:]


def test_one_process_keeps_its_arrays_whole():
  x = np.arange(12.).reshape(6, 2)
  np.testing.assert_array_equal(parallel.host_local(x), x)
  np.testing.assert_array_equal(parallel.allgather_rows(x), x)
  np.testing.assert_array_equal(parallel.allgather_rows(x[:0]), x[:0])


_HOST_SCRIPT = textwrap.dedent('''
  import sys
  import jax
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[1]))
  import numpy as np
  from scoresde_jax import parallel

  host = jax.process_index()
  assert jax.process_count() == 2 and jax.device_count() == 8
  mesh = parallel.make_mesh()
  x = np.arange(32).reshape(16, 2)
  local = x[8 * host:8 * (host + 1)]
  np.testing.assert_array_equal(parallel.host_local(parallel.shard_batch(local, mesh)), local)
  whole = parallel.host_local(jax.device_put(np.arange(5), parallel.replicated(mesh)))
  assert len(whole) == (5 if host == 0 else 0), whole
  # Uneven row counts: 3 on host 0, 7 on host 1.
  rows = parallel.allgather_rows(x[:3] if host == 0 else x[3:10])
  np.testing.assert_array_equal(rows, x[:10])
  print('OK')
''')


def test_two_hosts_keep_their_rows_and_gather_in_host_order():
  with socket.socket() as sock:  # a free port for the coordinator
    sock.bind(('localhost', 0))
    address = f'localhost:{sock.getsockname()[1]}'
  env = dict(os.environ, XLA_FLAGS=xla_flags(4),
             JAX_PLATFORMS='cpu')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  procs = [subprocess.Popen([sys.executable, '-c', _HOST_SCRIPT, str(i), address], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]
  finally:  # a host that waits for the other forever
    for p in procs:
      p.kill()
  for p, (stdout, stderr) in zip(procs, outs):
    assert p.returncode == 0 and stdout.strip().endswith('OK'), stderr[-3000:]
