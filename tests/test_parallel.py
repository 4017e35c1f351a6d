"""Sharded over 8 (simulated) devices, samplers and the training step give the single-device
results. Runs in a subprocess because the device count is fixed when JAX starts."""
import json
import os
import subprocess
import sys
import textwrap

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


def test_eight_devices_match_one():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', SCRIPT], env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  assert out['pc_shards'] == 8 and out['pc_shard_shape'] == [8, 4]
  # Relative differences: only the order of float32 reductions differs between the two.
  assert out['pc_diff'] < 1e-4, out  # 100 steps amplify the batch-norm rounding of Langevin
  assert out['ode_diff'] < 1e-5 and out['ode_nfe'][0] == out['ode_nfe'][1]
  losses_one, losses_eight = out['loss']
  assert all(abs(a - b) < 1e-5 * max(1.0, abs(a)) for a, b in zip(losses_one, losses_eight))
  assert out['param_diff'] < 1e-5, out
