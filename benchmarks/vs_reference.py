"""Ours vs the PyTorch reference (yang-song/score_sde_pytorch) on CPU, same config (issue 15).

Runs the reference and this package on the same config, batch (default 8), dtype (float32)
and thread count, alternating: for each of `--repeats` rounds and each config, one reference
child process, then one of ours. Each child measures, in its one process:
  train step      whole optimizer steps on a random batch: images/s = batch / median seconds
                  of one step over `--steps` calls, after `--warmup` untimed calls.
                  Reference: its `losses.get_step_fn(sde, train=True, optimize_fn=
                  losses.optimization_manager(config), ...)` on the `state` dict that its
                  `run_lib.train` builds (DataParallel model, Adam, EMA, step): loss,
                  backward, warmup + gradient clipping, Adam, EMA. Ours:
                  `benchmarks/train_step.py`'s step (`losses.get_step_fn` jitted with the
                  state donated; the same loss, clipping, Adam and EMA), one step per call.
  forward         score evaluations/s = batch / median seconds of one call of the score
                  function (evaluation mode, t ~ U(eps, T)). Reference:
                  `mutils.get_score_fn(sde, model, train=False, continuous=True)` under
                  `torch.no_grad()`; ours: `setup.get_score_fn` jitted.
  compile s       ours only: lowering + compiling the training step (the reference is eager).
  parameters      a check that both networks are the same size.
The table shows the median over the repeats of each child's median, and ours/reference
(> 1: ours is faster). Every number is a whole-call wall-clock timing in its own process; each
repeat starts fresh processes, so ours compiles again every repeat. `--json` keeps every
repeat's timings, both configs' compared fields and the versions.

Threads. Both children get OMP_NUM_THREADS = MKL_NUM_THREADS = OPENBLAS_NUM_THREADS =
`--threads` and the same environment otherwise (JAX_PLATFORMS=cpu, CUDA_VISIBLE_DEVICES='',
XLA_FLAGS passed as it is); torch also gets `torch.set_num_threads(--threads)`. XLA's CPU
backend has no exact thread-count knob (`--xla_cpu_multi_thread_eigen` only switches its
thread pool on or off, and is left as XLA_FLAGS has it): it uses every CPU the process may run
on. So when `--threads` is below that count, both children are pinned (sched_setaffinity) to
the same first `--threads` CPUs, which bounds XLA and torch alike. Ours splits those CPUs as
`main.py` does by default (`--cpu_devices auto`: one single-threaded JAX device per thread, as
many as divide the batch, the batch sharded over them; `--cpu_devices 1`: one device, XLA's
own threads). Measure on a quiet machine:
torch's OpenMP threads spin at barriers and degrade badly when other processes share the
cores (on a 2-core machine with other jobs running, the tiny VE forward took 2.4 s with 2
torch threads and 0.08 s with 1), which would make the ratio meaningless.

The reference runs from a checkout given by path (never copied here), with a Python that has
torch; it only imports the reference's `models` (ncsnpp, ddpm, utils, ema), `losses`,
`sde_lib`, `op` and `configs/`, never its TensorFlow modules (datasets, run_lib, evaluation).
Its `op/upfirdn2d.py` and `op/fused_act.py` build CUDA extensions with
`torch.utils.cpp_extension.load` at import; the reference child replaces that `load` by a
stub while importing `op` (the stub raises if anything touches the extension), so the
reference's own code runs unmodified and, on CPU tensors, takes its `upfirdn2d_native` path
(the FIR resampling of NCSN++, `model.fir = True` in the VE config). The child counts
`upfirdn2d_native` calls in one untimed forward pass and reports them under the table.

Reference venv (torch CPU wheel; ml-collections brings absl-py and PyYAML; scipy,
tensorflow and torchvision are not needed for these modules):
  python -m venv /tmp/ref-venv
  /tmp/ref-venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
  /tmp/ref-venv/bin/pip install ml-collections numpy
  git clone https://github.com/yang-song/score_sde_pytorch /tmp/score_sde_pytorch

Full measurement (both configs, batch 8, 3 repeats of 3 timed calls; tens of minutes on a
few cores, mostly our compilation):
  python benchmarks/vs_reference.py --reference /tmp/score_sde_pytorch \\
      --reference_python /tmp/ref-venv/bin/python --json /tmp/vs_reference.json
Smoke test (tiny networks, the same shrinking on both sides; numbers meaningless):
  python benchmarks/vs_reference.py --reference /tmp/score_sde_pytorch \\
      --reference_python /tmp/ref-venv/bin/python --tiny --steps 1 --repeats 1

Ours needs this repository's venv (jax, flax, optax, ml_collections); run it with that Python.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, REPO_ROOT)

# Imports only the standard library at module level, so the reference's Python can load this
# file as well.
from benchmarks import common  # noqa: E402

DEFAULT_CONFIGS = ('ve/cifar10_ncsnpp_continuous', 'vp/cifar10_ddpmpp_continuous')
# Fields compared between the two configs (every model / optim field both have, plus these).
COMPARED_TRAINING = ('sde', 'continuous', 'reduce_mean', 'likelihood_weighting')
COMPARED_DATA = ('image_size', 'num_channels', 'centered')
IGNORED_MODEL = ('dtype',)  # ours only; the reference is float32 throughout


def allowed_cpus() -> list[int]:
  try:
    return sorted(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return list(range(os.cpu_count() or 1))


# ----------------------------------------------------------------------------------------
# Reference child (runs under --reference_python: torch, no jax)


def _import_reference(root: str):
  """Imports the reference's modules from `root` with its CUDA extensions stubbed out."""
  # This file's folders hold `configs/`, `sampling.py`, ...; they would shadow the reference's
  # own `configs` (a namespace package there, and a regular package wins over one anywhere
  # on the path).
  drop = {os.path.abspath(p) for p in (REPO_ROOT, BENCH_DIR)}
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') not in drop]
  sys.path.insert(0, root)
  import torch  # pylint: disable=import-outside-toplevel
  import torch.utils.cpp_extension as cpp_extension  # pylint: disable=import-outside-toplevel

  class _NoExtension:
    """Stands for a CUDA extension that was not built; only the CPU paths may run."""

    def __init__(self, name):
      self._name = name

    def __getattr__(self, attr):
      raise RuntimeError(f'the reference called its CUDA extension {self._name}.{attr}, '
                         'which this CPU benchmark does not build')

  real_load = cpp_extension.load
  cpp_extension.load = lambda name, *a, **k: _NoExtension(name)
  try:
    import op  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  finally:
    cpp_extension.load = real_load
  # Importing registers the models by name, as run_lib's own imports do (ncsnv2 is not needed
  # by the configs here).
  # pylint: disable-next=import-outside-toplevel,unused-import
  from models import ddpm, ncsnpp  # noqa: F401
  from models import utils as mutils  # pylint: disable=import-outside-toplevel
  from models.ema import ExponentialMovingAverage  # pylint: disable=import-outside-toplevel
  import losses  # pylint: disable=import-outside-toplevel
  import sde_lib  # pylint: disable=import-outside-toplevel
  return torch, mutils, ExponentialMovingAverage, losses, sde_lib


def _reference_config(root: str, name: str, model_overrides: dict):
  path = os.path.join(root, 'configs', name + '.py')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'the reference has no configs/{name}.py')
  spec = importlib.util.spec_from_file_location('_reference_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in model_overrides.items():
    old = config.model[key]
    # JSON turns tuples into lists; ConfigDict keeps a field's type.
    config.model[key] = type(old)(value) if isinstance(old, (list, tuple)) else value
  return config


def _config_fields(config) -> dict:
  """The config's model/optim/training/data fields as JSON values, keyed 'group.field'."""
  out = {}
  for group in ('model', 'optim', 'training', 'data'):
    for key, value in config[group].items():
      if isinstance(value, (list, tuple)):
        value = list(value)
      elif not isinstance(value, (str, int, float, bool, type(None))):
        continue
      out[f'{group}.{key}'] = value
  return out


def _time_eager(fn, steps: int, warmup: int) -> tuple[float, list[float]]:
  # common.time_calls blocks on jax arrays and this Python has no jax; torch's CPU ops are
  # synchronous, so the call's return is the end of its work.
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def run_reference(config_name: str, args) -> dict:
  try:
    torch, mutils, ema_cls, losses, sde_lib = _import_reference(os.path.abspath(args.reference))
  except ImportError as e:
    raise SystemExit(f'{sys.executable} cannot import the reference ({args.reference}): '
                     f'{type(e).__name__}: {e}') from e
  torch.set_num_threads(args.threads)
  config = _reference_config(args.reference, config_name, json.loads(args.model_overrides))
  config.device = torch.device('cpu')
  torch.manual_seed(0)

  # The state and step function as the reference's run_lib.train builds them (run_lib itself
  # imports TensorFlow).
  model = mutils.create_model(config)
  ema = ema_cls(model.parameters(), decay=config.model.ema_rate)
  optimizer = losses.get_optimizer(config, model.parameters())
  state = dict(optimizer=optimizer, model=model, ema=ema, step=0)
  kind = config.training.sde.lower()
  if kind == 'vesde':
    sde = sde_lib.VESDE(sigma_min=config.model.sigma_min, sigma_max=config.model.sigma_max,
                        N=config.model.num_scales)
    eps = 1e-5
  elif kind in ('vpsde', 'subvpsde'):
    cls = sde_lib.VPSDE if kind == 'vpsde' else sde_lib.subVPSDE
    sde = cls(beta_min=config.model.beta_min, beta_max=config.model.beta_max,
              N=config.model.num_scales)
    eps = 1e-3
  else:
    raise NotImplementedError(f'SDE {config.training.sde} unknown.')
  step_fn = losses.get_step_fn(sde, train=True, optimize_fn=losses.optimization_manager(config),
                               reduce_mean=config.training.reduce_mean,
                               continuous=config.training.continuous,
                               likelihood_weighting=config.training.likelihood_weighting)
  size, channels = config.data.image_size, config.data.num_channels
  batch = torch.rand(args.batch, channels, size, size)
  if config.data.centered:
    batch = batch * 2 - 1
  # Holds the last loss tensor and reads it after timing, as run_lib's loop does (it calls
  # .item() only to log).
  last = {}

  def train():
    last['loss'] = step_fn(state, batch)

  train_s, train_times = _time_eager(train, args.steps, args.warmup)

  score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
  x = torch.randn(args.batch, channels, size, size)
  t = torch.rand(args.batch) * (sde.T - eps) + eps

  def forward():
    with torch.no_grad():
      return score_fn(x, t)

  # Which resampling path the reference takes: count upfirdn2d_native calls in one untimed
  # forward pass (`op.upfirdn2d` the attribute is the function, hence sys.modules).
  upfirdn = sys.modules['op.upfirdn2d']
  native, calls = upfirdn.upfirdn2d_native, [0]

  def counting(*a, **k):
    calls[0] += 1
    return native(*a, **k)

  upfirdn.upfirdn2d_native = counting
  try:
    forward()
  finally:
    upfirdn.upfirdn2d_native = native
  fwd_s, fwd_times = _time_eager(forward, args.steps, args.warmup)

  return {
      'framework': 'reference', 'config': config_name, 'batch': args.batch,
      'num_params': int(sum(p.numel() for p in model.parameters())),
      'images_per_s': args.batch / train_s, 'train_times_s': train_times,
      'loss': last['loss'].item(), 'forward_evals_per_s': args.batch / fwd_s,
      'forward_times_s': fwd_times, 'upfirdn2d_native_calls_per_forward': calls[0],
      'fir': bool(config.model.fir), 'torch': torch.__version__,
      'torch_threads': torch.get_num_threads(), 'cpus': len(allowed_cpus()),
      'config_fields': _config_fields(config),
  }


# ----------------------------------------------------------------------------------------
# Our child (runs under this repository's venv)


def run_ours(config_name: str, args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from benchmarks import train_step  # pylint: disable=import-outside-toplevel
  from scoresde_jax import parallel, sde_lib  # pylint: disable=import-outside-toplevel
  from scoresde_jax.run import networks, setup  # pylint: disable=import-outside-toplevel

  parallel.split_cpu(ours_cpu_devices(args))

  train = train_step.run_one(config_name, 'float32', argparse.Namespace(
      batch=args.batch, steps=args.steps, warmup=args.warmup, tiny=args.tiny, n_jitted=1))

  # The forward row of benchmarks/sampling.py, without its sampler (whose compilation would
  # double this child's time and has no reference counterpart here).
  config = common.load_config(config_name, 'float32', tiny=args.tiny)
  sde = setup.get_sde(config)
  model = networks.get_model(config)
  mesh = parallel.make_mesh()
  params = jax.jit(lambda key: networks.init_model(key, config)[1],
                   out_shardings=parallel.replicated(mesh))(jax.random.PRNGKey(0))
  score_fn = setup.get_score_fn(config, sde, model, params)
  size, channels = config.data.image_size, config.data.num_channels
  kx, kt = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.normal(kx, (args.batch, size, size, channels), jnp.float32)
  t = jax.random.uniform(kt, (args.batch,), jnp.float32, sde_lib.sampling_eps(sde), sde.T)
  x, t = (jax.device_put(a, parallel.data_sharding(mesh)) for a in (x, t))
  info = common.compiled_info(jax.jit(lambda s, x, t: s(x, t)), score_fn, x, t)
  compiled = info['compiled']
  fwd_s, fwd_times = common.time_calls(lambda: compiled(score_fn, x, t), args.steps,
                                       args.warmup)
  return {
      'framework': 'ours', 'config': config_name, 'batch': args.batch,
      'num_params': train['num_params'], 'images_per_s': train['images_per_s'],
      'train_times_s': train['times_s'], 'compile_s': train['compile_s'],
      'loss': train['loss'], 'forward_evals_per_s': args.batch / fwd_s,
      'forward_times_s': fwd_times, 'forward_compile_s': info['compile_s'],
      'jax': jax.__version__, 'platform': train['platform'], 'cpus': len(allowed_cpus()),
      'jax_devices': jax.device_count(),
      'config_fields': _config_fields(config),
  }


# ----------------------------------------------------------------------------------------
# Parent


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown CPU'


def ours_cpu_devices(args) -> int:
  from scoresde_jax import parallel  # pylint: disable=import-outside-toplevel
  return parallel.cpu_devices_from_flag(args.cpu_devices, [args.batch], cores=args.threads)


def child_env(threads: int) -> dict:
  env = dict(os.environ)
  for var in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
    env[var] = str(threads)
  # CPU for both, even on a machine with a GPU build of either framework.
  env['JAX_PLATFORMS'] = 'cpu'
  env['CUDA_VISIBLE_DEVICES'] = ''
  return env


def run_child(framework: str, config_name: str, args, env: dict, cpus: list[int] | None,
              model_overrides: dict) -> dict:
  python = args.reference_python if framework == 'reference' else sys.executable
  cmd = [python, os.path.abspath(__file__), '--_child', framework, '--configs', config_name,
         '--batch', str(args.batch), '--steps', str(args.steps), '--warmup', str(args.warmup),
         '--threads', str(args.threads), '--cpu_devices', str(args.cpu_devices)]
  if framework == 'reference':
    cmd += ['--reference', os.path.abspath(args.reference),
            '--model_overrides', json.dumps(model_overrides)]
  elif args.tiny:
    cmd.append('--tiny')
  preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                        env=env, preexec_fn=preexec, check=False)
  line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith('{')), None)
  if proc.returncode != 0 or line is None:
    print(proc.stderr[-4000:], file=sys.stderr)
    tail = proc.stderr.strip().splitlines()[-1:] or ['no output']
    return {'framework': framework, 'config': config_name,
            'error': f'exit {proc.returncode}: {tail[0]}'}
  result = json.loads(line)
  result['child_s'] = time.perf_counter() - t0
  return result


def tiny_overrides(config_name: str) -> dict:
  """The model fields `common.load_config(tiny=True)` changes, to apply to the reference."""
  full = common.load_config(config_name, 'float32')
  tiny = common.load_config(config_name, 'float32', tiny=True)
  return {k: (list(v) if isinstance(v, tuple) else v) for k, v in tiny.model.items()
          if full.model[k] != v}


def config_mismatches(ref: dict, ours: dict) -> list[str]:
  keys = [k for k in ref if k in ours and (
      (k.startswith(('model.', 'optim.')) and k.split('.', 1)[1] not in IGNORED_MODEL)
      or (k.startswith('training.') and k.split('.', 1)[1] in COMPARED_TRAINING)
      or (k.startswith('data.') and k.split('.', 1)[1] in COMPARED_DATA))]
  return [f'{k}: reference {ref[k]!r}, ours {ours[k]!r}' for k in sorted(keys)
          if ref[k] != ours[k]]


def summarize(args, results: dict) -> str:
  """The header line, the table and the notes."""
  rows, notes = [], []
  versions = {}
  for config_name in args.configs:
    runs = results[config_name]
    ok = {f: [r for r in runs[f] if 'error' not in r] for f in ('reference', 'ours')}
    for f in ('reference', 'ours'):
      for r in runs[f]:
        if 'error' in r:
          notes.append(f'{config_name} {f}: {r["error"][:300]}')
      if ok[f]:
        versions.update({k: ok[f][0][k] for k in ('torch', 'jax', 'torch_threads')
                         if k in ok[f][0]})

    def med(framework, key):
      values = [r[key] for r in ok[framework] if r.get(key) is not None]
      return statistics.median(values) if values else None

    def ratio(a, b):
      return 'n/a' if a is None or b is None or b == 0 else f'{a / b:.2f}x'

    for label, key, spec in (('parameters', 'num_params', ',.0f'),
                             ('train step, images/s', 'images_per_s', ',.2f'),
                             ('forward, score evals/s', 'forward_evals_per_s', ',.2f')):
      ref, ours = med('reference', key), med('ours', key)
      rows.append([config_name, label, common.fmt(ref, spec), common.fmt(ours, spec),
                   ratio(ours, ref)])
    rows.append([config_name, 'train step compile s (ours; reference is eager)', '-',
                 common.fmt(med('ours', 'compile_s'), '.1f'), '-'])
    if ok['reference']:
      r = ok['reference'][0]
      notes.append(f'{config_name}: reference model.fir = {r["fir"]}, upfirdn2d_native calls '
                   f'per forward = {r["upfirdn2d_native_calls_per_forward"]}')
    if ok['reference'] and ok['ours']:
      diff = config_mismatches(ok['reference'][0]['config_fields'],
                               ok['ours'][0]['config_fields'])
      notes.append(f'{config_name}: configs differ in ' + '; '.join(diff) if diff else
                   f'{config_name}: the compared model/optim/training/data fields match')

  cpus = len(allowed_cpus())
  pinned = (f', both pinned to the same {args.threads} of {cpus} CPUs'
            if args.threads < cpus else '')
  threads = f'{args.threads} thread{"s" if args.threads > 1 else ""}'
  devices = f'ours on {ours_cpu_devices(args)} CPU device(s) (--cpu_devices {args.cpu_devices})'
  header = (f'Ours vs score_sde_pytorch on {cpu_model()}, {os.cpu_count()} cores; '
            f'{threads} (torch.set_num_threads and OMP/MKL_NUM_THREADS; XLA uses '
            f'every CPU the process may run on{pinned}); {devices}; '
            f'torch {versions.get("torch", "?")}, '
            f'jax {versions.get("jax", "?")}; {datetime.datetime.now():%Y-%m-%d %H:%M}; '
            f'float32, batch {args.batch}, median over {args.repeats} alternating repeats of '
            f'the median of {args.steps} timed calls after {args.warmup} untimed'
            f'{"; TINY networks (smoke test, numbers meaningless)" if args.tiny else ""}')
  table = common.markdown_table(['config', 'measurement', 'reference', 'ours',
                                 'ours/reference'], rows)
  return '\n'.join([header, '', table, ''] + [f'- {n}' for n in notes])


def fail(message: str):
  """Exits with one line on stderr (no usage text: the message says what to fix)."""
  sys.exit(f'{os.path.basename(__file__)}: error: {message}')


def child_main(args):
  # pylint: disable-next=protected-access
  run = run_reference if args._child == 'reference' else run_ours
  print(json.dumps(run(args.configs[0], args), default=str), flush=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reference', default=None,
                      help='path of a score_sde_pytorch checkout (read in place, never copied)')
  parser.add_argument('--reference_python', default=None,
                      help="a Python with torch and ml_collections, to run the reference")
  parser.add_argument('--configs', nargs='+', default=list(DEFAULT_CONFIGS),
                      help='config names present in both repositories, e.g. '
                      've/cifar10_ncsnpp_continuous')
  parser.add_argument('--batch', type=int, default=8, help='images per call')
  parser.add_argument('--steps', type=int, default=3,
                      help='timed calls per child and measurement (median taken)')
  parser.add_argument('--warmup', type=int, default=1, help='untimed calls before timing')
  parser.add_argument('--repeats', type=int, default=3,
                      help='alternating rounds (reference child, then ours) per config')
  parser.add_argument('--threads', type=int, default=len(allowed_cpus()),
                      help='threads of both (default: the CPUs this process may use, i.e. '
                      'os.cpu_count() unless restricted)')
  parser.add_argument('--cpu_devices', default='auto',
                      help="ours: JAX devices the --threads CPUs are split into (main.py's "
                      '--cpu_devices; auto: one per thread, as many as divide --batch)')
  parser.add_argument('--tiny', action='store_true',
                      help="shrink both networks alike (our common.load_config's tiny fields); "
                      'a smoke test, the numbers mean nothing')
  parser.add_argument('--json', default=None, help='also write every run to this JSON file')
  parser.add_argument('--_child', choices=['reference', 'ours'], help=argparse.SUPPRESS)
  parser.add_argument('--model_overrides', default='{}', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args._child:  # pylint: disable=protected-access
    child_main(args)
    return

  if min(args.batch, args.steps, args.repeats, args.threads) < 1 or args.warmup < 0:
    fail('--batch, --steps, --repeats and --threads must be >= 1 and --warmup >= 0.')
  try:
    devices = ours_cpu_devices(args)
  except ValueError as e:
    fail(f'{e}.')
  if args.batch % devices:
    fail(f'--batch {args.batch} does not split over --cpu_devices {args.cpu_devices}.')
  if not args.reference:
    fail('--reference PATH (a score_sde_pytorch checkout) is required.')
  if not os.path.isfile(os.path.join(args.reference, 'models', 'ncsnpp.py')):
    fail(f'--reference {args.reference}: not a score_sde_pytorch checkout '
         '(no models/ncsnpp.py there).')
  if not args.reference_python:
    fail('--reference_python PATH (a Python with torch and ml_collections) is required.')
  if not (os.path.isfile(args.reference_python) and os.access(args.reference_python, os.X_OK)):
    fail(f'--reference_python {args.reference_python}: no executable there.')
  for name in args.configs:
    for where, root in (('ours', REPO_ROOT), ('the reference', args.reference)):
      if not os.path.isfile(os.path.join(root, 'configs', name + '.py')):
        fail(f'--configs {name}: {where} has no configs/{name}.py.')
  probe = subprocess.run([args.reference_python, '-c', 'import torch, ml_collections, numpy'],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False)
  if probe.returncode != 0:
    last = (probe.stderr.strip().splitlines() or ['?'])[-1]
    fail(f'--reference_python {args.reference_python} cannot import torch, '
         f'ml_collections and numpy ({last}); see this script\'s --help for the venv.')
  cpus = allowed_cpus()
  if args.threads > len(cpus):
    fail(f'--threads {args.threads}: this process may only use {len(cpus)} CPUs.')

  pinned = cpus[:args.threads] if args.threads < len(cpus) else None
  env = child_env(args.threads)
  overrides = {c: tiny_overrides(c) if args.tiny else {} for c in args.configs}
  results = {c: {'reference': [], 'ours': []} for c in args.configs}
  for r in range(args.repeats):
    for config_name in args.configs:
      for framework in ('reference', 'ours'):
        print(f'# repeat {r + 1}/{args.repeats}: {config_name}, {framework} ...',
              file=sys.stderr, flush=True)
        result = run_child(framework, config_name, args, env, pinned, overrides[config_name])
        results[config_name][framework].append(result)

  print(summarize(args, results))
  common.write_json(args.json, {
      'benchmark': 'vs_reference', 'cpu': cpu_model(), 'cpu_count': os.cpu_count(),
      'threads': args.threads, 'pinned_cpus': pinned, 'batch': args.batch,
      'steps': args.steps, 'warmup': args.warmup, 'repeats': args.repeats, 'tiny': args.tiny,
      'model_overrides': overrides, 'date': datetime.datetime.now().isoformat(),
      'results': results})


if __name__ == '__main__':
  main()
