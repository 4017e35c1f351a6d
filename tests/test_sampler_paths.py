"""Every entry point builds its sampler through one path, so they all agree.

For every sampling method a config can name (VE; PC and DPM-Solver++ also under VP), the
training snapshots (`train.snapshot_sampler`),
an evaluation sweep (`SampleQuality.sampler`) and `--mode sample` (`sample.get_sampler`) build
samplers with the same end time eps, the same NFE and the same sharding over 8 (simulated)
devices, and from one key they draw the same samples. A VE sweep with DPM-Solver++ integrates
to the paper's eps = 1e-5 (it used to stop at 1e-3). Inpainting runs the same PC loop: with
nothing known it draws the plain sampler's samples (up to float rounding). Scores are closed-form Gaussian
ones (data ~ N(0, I)), so no network is involved. Runs in a subprocess because the device
count is fixed when JAX starts.
"""
import json
import os
import subprocess
import sys
import textwrap

from xla_test_flags import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('pc', 'ode', 'ddim', 'dpm_solver_1', 'dpm_solver_2m', 'dpm_solver_3m', 'heun')

SCRIPT = textwrap.dedent('''
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import configs
    from scoresde_jax import controllable, fast_solvers, parallel, sde_lib
    from scoresde_jax.run import sample, sample_quality, setup, sweeps, train

    assert jax.device_count() == 8
    mesh = parallel.make_mesh()
    data = parallel.data_sharding(mesh)
    methods = json.loads(sys.argv[1])

    def gaussian_score(sde):
        # Data ~ N(0, I): p_t = N(0, (alpha^2 + sigma^2) I).
        def score(x, t):
            alpha, sigma = sde.marginal_prob(jnp.ones((x.shape[0],)), t)
            return -x / (alpha**2 + sigma**2).reshape((-1,) + (1,) * (x.ndim - 1))
        return score

    def tiny(path, method):
        config = configs.load_config(path)
        # DDPM's discretization needs beta_max / N < 1.
        config.model.num_scales = 10 if '/ve/' in path else 40
        config.data.image_size = 4
        config.training.batch_size = config.eval.batch_size = config.eval.num_samples = 16
        config.sampling.method = method
        config.sampling.predictor, config.sampling.corrector = 'reverse_diffusion', 'langevin'
        config.sampling.fast = {'steps': 5}
        del config.eval.sweep  # the defaults type it as a string
        config.eval.sweep = None
        return config

    def paths(config):
        (setting,) = sweeps.get_sweep(config)
        return {'snapshot': train.snapshot_sampler(config, mesh),
                'sweep': sample_quality.SampleQuality(config, mesh, {}, {}).sampler(setting),
                'sample': sample.get_sampler(config, mesh, 16)}

    out = {}
    for sde_name, sde_methods in (('ve', methods), ('vp', ['pc', 'dpm_solver_2m'])):
        for method in sde_methods:
            config = tiny(f'configs/{sde_name}/digits.py', method)
            sde = setup.get_sde(config)
            score = gaussian_score(sde)
            row = {}
            for name, sampler in paths(config).items():
                x, nfe = sampler(jax.random.PRNGKey(0), score)[:2]
                row[name] = {'eps': sampler.eps, 'nfe': int(nfe), 'shape': list(x.shape),
                             'finite': bool(jnp.all(jnp.isfinite(x))),
                             'sharding': repr(sampler.sharding),
                             'out_sharding_ok': x.sharding.is_equivalent_to(data, x.ndim),
                             'shards': len(x.addressable_shards),
                             'sample': np.asarray(x).ravel()[:64].tolist()}
            out[f'{sde_name}/{method}'] = row

    # The VE sweep's DPM-Solver++: the same samples as the solver built directly to 1e-5.
    config = tiny('configs/ve/digits.py', 'dpm_solver_2m')
    sde = setup.get_sde(config)
    score = gaussian_score(sde)
    (setting,) = sweeps.get_sweep(config)
    swept, _ = sample_quality.SampleQuality(config, mesh, {}, {}).sampler(setting)(
        jax.random.PRNGKey(0), score)
    direct = {e: fast_solvers.get_fast_sampler('dpm_solver_2m', sde, swept.shape, steps=5, eps=e)(
                  jax.random.PRNGKey(0), score)[0] for e in (1e-5, 1e-3)}
    out['ve_dpm_diff'] = {str(e): float(jnp.abs(swept - d).max()) for e, d in direct.items()}

    # Inpainting with nothing known is the plain PC sampler of the same settings.
    config = tiny('configs/vp/digits.py', 'pc')
    sde = setup.get_sde(config)
    spec = setup.sampler_spec(config)
    plain, _ = setup.get_sampler(config, (16, 4, 4, 1), data)(jax.random.PRNGKey(3), gaussian_score(sde))
    inpainter = controllable.get_pc_inpainter(
        sde, spec.predictor, spec.corrector, spec.snr, spec.n_steps_each, eps=1e-3, sharding=data)
    painted, _ = inpainter(jax.random.PRNGKey(3), gaussian_score(sde), jnp.ones((16, 4, 4, 1)),
                           jnp.zeros((16, 4, 4, 1)))
    assert bool(jnp.all(jnp.isfinite(plain)))
    out['inpaint_nothing_known_diff'] = float(jnp.abs(plain - painted).max())
    print('RESULT' + json.dumps(out))
''')


def test_every_entry_point_builds_the_same_sampler():
  # The three entry points compile the same programs: with every compilation kept in the
  # persistent cache (not only those over a second), the second and third are cache hits
  # (40 s -> 30 s of this test on the 2-core CPU).
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), JAX_PLATFORMS='cpu',
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  env['PYTHONPATH'] = REPO + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', SCRIPT, json.dumps(METHODS)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split('RESULT', 1)[1])
  for sde_name, eps, methods in (('ve', 1e-5, METHODS), ('vp', 1e-3, ('pc', 'dpm_solver_2m'))):
    for method in methods:
      row = out[f'{sde_name}/{method}']
      first = row['snapshot']
      assert first['eps'] == eps, (sde_name, method, first['eps'])
      assert first['shape'] == [16, 4, 4, 1] and first['shards'] == 8
      for name, got in row.items():
        assert got['out_sharding_ok'] and got['finite'], (sde_name, method, name)
        for key in ('eps', 'nfe', 'shape', 'sharding', 'sample'):
          assert got[key] == first[key], (sde_name, method, name, key)
  nfe = {m: out[f've/{m}']['snapshot']['nfe'] for m in METHODS}
  # PC: 10 predictor + 10 corrector steps; DDIM / DPM-Solver++: one per step; Heun: two per
  # step and the final denoising step; ODE: adaptive.
  assert nfe['pc'] == 20 and nfe['ddim'] == 5 and nfe['dpm_solver_3m'] == 5
  assert nfe['heun'] == 11 and nfe['ode'] > 5
  assert out['ve_dpm_diff']['1e-05'] == 0.0 and out['ve_dpm_diff']['0.001'] > 1e-5
  # Same noise, same updates: equal up to float rounding of the (no-op) replacement; a
  # different noise stream would differ by O(1).
  assert out['inpaint_nothing_known_diff'] < 1e-5
