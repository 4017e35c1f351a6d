"""The notebooks of notebooks/ run top to bottom in a real Jupyter kernel, small, on CPU.

Each notebook gets tiny values for its parameters (a cell injected after its `parameters`
cell, see tests/notebook_utils.py) and writes a JSON summary; the tests check that the
values were honoured (steps, sizes, NFE of the samplers, files written) and that the
kernel was this interpreter. The three run concurrently in one test, one kernel each (about
2 minutes on a 2-core CPU, mostly XLA compilation); the quickstart with two host devices, so
its training and sampling run data-parallel. A cell error fails the test with the cell's
traceback.

The pretrained notebook loads tests/fixtures/ref_ve_ncsnpp.pth, a checkpoint written by
score_sde_pytorch's own training code (tests/fixtures/REFERENCE_CHECKPOINTS.md), with its
config.
"""
import ast
import json
import math
import os
import sys

import nbformat
import numpy as np
import pytest

import notebook_utils as nu
from run_utils import reference_checkpoint_config, write_config_file
from xla_test_flags import xla_flags

FIXTURES = os.path.join(nu.ROOT, 'tests', 'fixtures')
CHECKPOINT = os.path.join(FIXTURES, 'ref_ve_ncsnpp.pth')
CELL_TIMEOUT = 300  # seconds; a cell that hangs fails the test
NOTEBOOKS = ('quickstart', 'pretrained', 'evaluate')

QUICKSTART = dict(TRAIN_STEPS=20, BATCH_SIZE=8, NUM_SCALES=10, NUM_SAMPLES=8, ODE_TOL=1e-3,
                  NUM_BPD_DIGITS=4, FAST_STEPS=3,
                  MODEL={'nf': 8, 'ch_mult': (1,), 'num_res_blocks': 1, 'attn_resolutions': ()})
PRETRAINED = dict(CHECKPOINT=CHECKPOINT, NUM_SCALES=10, FAST_STEPS=5, NUM_SAMPLES=4, NUM_IMAGES=2,
                  NUM_INTERPOLATION=3, ODE_TOL=1e-3)
EVALUATE = dict(INCEPTION_WEIGHTS='random', NUM_REF_IMAGES=16, NUM_DEMO_IMAGES=8, BATCH_SIZE=8,
                IS_SPLITS=2, SWEEP_SDES=['VE', 'VP'], SWEEP_N=30, SWEEP_SAMPLES=256,
                FAST_STEPS=5)
TINY = {'quickstart': QUICKSTART, 'pretrained': PRETRAINED, 'evaluate': EVALUATE}
# Extra kernel environment per notebook.
ENVS = {'quickstart': {'XLA_FLAGS': xla_flags(2)},
        'pretrained': {'XLA_FLAGS': xla_flags()}, 'evaluate': {'XLA_FLAGS': xla_flags()}}


def parameter_names(nb):
  """Names assigned in the notebook's parameters cell."""
  tree = ast.parse(nb.cells[nu.parameters_index(nb)].source)
  return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


def fixture_config_file(path):
  """A config file for the fixture checkpoint: the config its training run used."""
  config = reference_checkpoint_config(os.path.basename(CHECKPOINT))
  config.sampling.update(method='pc', predictor='reverse_diffusion', corrector='langevin')
  write_config_file(path, config)
  return config


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_is_stripped_and_has_parameters(name):
  nb = nu.read_notebook(f'{name}.ipynb')
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == 'code']
  assert all(c.outputs == [] and c.execution_count is None for c in code), 'outputs not stripped'
  for cell in code:  # plain Python (no IPython magics), including branches CI does not run
    compile(cell.source, f'{name}.ipynb:{cell.get("id")}', 'exec')
  # The parameters cell is the first code cell, so overrides precede every use.
  assert nb.cells.index(code[0]) == nu.parameters_index(nb)
  names = parameter_names(nb)
  # Every value the tests override exists there (a misspelt override would be ignored).
  assert set(TINY[name]) <= names, set(TINY[name]) - names
  assert {'REPO_URL', 'SUMMARY_PATH', 'SEED'} <= names


def test_injected_parameters_follow_the_parameters_cell():
  nb = nu.read_notebook('quickstart.ipynb')
  injected = nu.inject_parameters(nb, {'TRAIN_STEPS': 3, 'MODEL': {'nf': 8}})
  i = nu.parameters_index(injected)
  assert injected.cells[i + 1].metadata.tags == ['injected-parameters']
  assert "TRAIN_STEPS = 3\nMODEL = {'nf': 8}" in injected.cells[i + 1].source
  assert len(injected.cells) == len(nb.cells) + 1 and nu.parameters_index(nb) == i
  with pytest.raises(ValueError, match='literal'):
    nu.inject_parameters(nb, {'X': object()})


def run_notebooks(tmp):
  """{name: (summary dict, executed notebook, seconds, workdir) or the exception raised}."""
  config_path = str(tmp / 'fixture_config.py')
  fixture_config_file(config_path)
  params, workdirs = {}, {}
  for name in NOTEBOOKS:
    workdirs[name] = str(tmp / f'{name}_run')
    params[name] = dict(TINY[name], WORKDIR=workdirs[name],
                        SUMMARY_PATH=str(tmp / f'{name}_summary.json'))
  params['pretrained']['CONFIG'] = config_path
  notebooks = [nu.inject_parameters(nu.read_notebook(f'{n}.ipynb'), params[n]) for n in NOTEBOOKS]
  with nu.kernel_spec(str(tmp / 'kernel')) as kernel_name:
    results = nu.execute_all(notebooks, kernel_name, [ENVS[n] for n in NOTEBOOKS],
                             timeout=CELL_TIMEOUT)
  out = {}
  for name, result in zip(NOTEBOOKS, results):
    if isinstance(result, BaseException):
      out[name] = result
      continue
    nb, seconds = result
    slow = ', '.join(f'cell {i} {t:.0f} s' for i, t in nu.cell_seconds(nb) if t >= 2)
    print(f'{name}.ipynb: {seconds:.1f} s ({slow})')
    with open(params[name]['SUMMARY_PATH']) as f:
      out[name] = (json.load(f), nb, seconds, workdirs[name])
  return out


def test_notebooks_run_small(tmp_path):
  """All three in one test (so that pytest-xdist never runs them twice); every notebook's
  failure is reported, not only the first."""
  results = run_notebooks(tmp_path)
  failures = []
  for name, check in (('quickstart', check_quickstart), ('pretrained', check_pretrained),
                      ('evaluate', check_evaluate)):
    try:
      result = results[name]
      if isinstance(result, BaseException):
        raise result
      summary, nb, _, workdir = result
      assert summary['python'] == sys.executable  # the kernel ran this interpreter
      assert summary['backend'] == 'cpu'
      check(summary, nb, workdir)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{name}.ipynb: {type(e).__name__}: {e}')
  assert not failures, '\n\n'.join(failures)


def images_shown(nb):
  return sum('image/png' in out.get('data', {}) for c in nb.cells if c.cell_type == 'code'
             for out in c.outputs)


def check_quickstart(summary, nb, workdir):
  p = QUICKSTART
  assert summary['device_count'] == 2
  assert summary['train_step'] == p['TRAIN_STEPS'] and summary['batch_size'] == p['BATCH_SIZE']
  # The run directory holds the final snapshot and the config with the tiny network.
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', str(p['TRAIN_STEPS'])))
  with open(os.path.join(workdir, 'config.json')) as f:
    model = json.load(f)['model']
  assert model['nf'] == 8 and model['ch_mult'] == [1] and model['attn_resolutions'] == []
  assert summary['num_scales'] == p['NUM_SCALES']
  # The VP digits config: Euler-Maruyama predictor, no corrector.
  assert summary['pc_nfe'] == p['NUM_SCALES']
  image = [8, 8, 1]
  assert summary['pc_shape'] == summary['ode_shape'] == [p['NUM_SAMPLES']] + image
  assert summary['fast_nfe'] == p['FAST_STEPS'] and summary['fast_shape'] == summary['pc_shape']
  assert summary['trajectory_shape'] == [8, p['NUM_SAMPLES']] + image
  assert summary['ode_nfe'] > 0 and summary['bpd_nfe'] > 0
  bpd = summary['bpd']
  assert len(bpd) == p['NUM_BPD_DIGITS'] and all(math.isfinite(b) and b > 0 for b in bpd)
  assert images_shown(nb) >= 5  # PC, ODE and DPM-Solver samples, the trajectory, test digits


def check_pretrained(summary, nb, workdir):
  p = PRETRAINED
  assert summary['step'] == 2  # the step the reference's save_checkpoint recorded
  assert summary['source'] == 'pytorch'
  assert summary['num_scales'] == p['NUM_SCALES']
  assert summary['pc_nfe'] == 2 * p['NUM_SCALES'] == summary['inpaint_nfe']
  assert summary['fast_solver'] == 'dpm_solver_2m' and summary['fast_nfe'] == p['FAST_STEPS']
  assert summary['pc_shape'] == summary['fast_shape'] == [p['NUM_SAMPLES'], 8, 8, 3]
  assert len(summary['bpd']) == p['NUM_IMAGES'] and all(math.isfinite(b) for b in summary['bpd'])
  # Inpainting returns the known half exactly; colorization keeps the gray levels.
  assert summary['inpaint_known_error'] == 0.0
  assert summary['colorize_gray_error'] < 1e-3
  assert summary['interpolation_shape'] == [p['NUM_INTERPOLATION'], p['NUM_IMAGES'] // 2, 8, 8, 3]
  assert images_shown(nb) >= 5


def check_evaluate(summary, nb, workdir):
  from configs import load_config
  from scoresde_jax.run import sweeps
  p = EVALUATE
  assert summary['reference_num_images'] == p['NUM_REF_IMAGES']
  assert os.path.dirname(summary['stats_path']) == workdir
  with np.load(summary['stats_path']) as f:
    assert f['pool_3'].shape == (p['NUM_REF_IMAGES'], 2048)
  quality = summary['quality']
  assert [os.path.basename(q['folder']) for q in quality] == ['digits_heldout', 'digits_noisy']
  for q in quality:
    assert q['num_images'] == p['NUM_DEMO_IMAGES']
    assert len(os.listdir(q['folder'])) == p['NUM_DEMO_IMAGES']
    assert q['fid'] >= 0 and math.isfinite(q['is']) and math.isfinite(q['kid'])
  # The sweep: the paper's Table 1 settings at N = SWEEP_N, then the ODE and DPM-Solver++.
  n = p['SWEEP_N']
  config = load_config(os.path.join(nu.ROOT, 'configs/ve/digits.py'))
  config.model.num_scales = n
  names = [s['name'] for s in sweeps.paper_table1_sweep(config)]
  names += ['ODE_dopri5', f'DPM-Solver++_2M_{p["FAST_STEPS"]}']
  rows = summary['sweep']
  assert [(r['sde'], r['sampler']) for r in rows] == [(s, m) for s in p['SWEEP_SDES'] for m in names]
  expected_nfe = {f'P{n}': n, f'P{2 * n}': 2 * n, f'C{2 * n}': 2 * n, f'PC{n}': 2 * n,
                  'DPM-Solver++': p['FAST_STEPS']}
  for r in rows:
    prefix = r['sampler'].split('_')[0]
    if prefix in expected_nfe:
      assert r['nfe'] == expected_nfe[prefix], r
    assert math.isfinite(r['sliced_w2']), r
  assert summary['sweep_samples'] == p['SWEEP_SAMPLES']
  assert images_shown(nb) == 0 and summary['exact_sliced_w2'] > 0
