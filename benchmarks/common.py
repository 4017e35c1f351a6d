"""Shared helpers of benchmarks/train_step.py and benchmarks/sampling.py.

Needs jax, flax, optax, orbax-checkpoint, diffrax, numpy and ml_collections (the configs are
ml_collections ConfigDicts); never TensorFlow or clu (the data is random arrays, so no input
pipeline is involved). On a machine without the repository's venv, carry the package and its
wheels, e.g. `pip install -e . ` or `pip install ml-collections` beside jax[cuda12].

Each (config, dtype) case runs in a fresh child process: device memory statistics only ever
grow within a process (`peak_bytes_in_use`), and a child frees everything of the previous
case. The parent collects one JSON line per case and prints the markdown table.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)

DEFAULT_CONFIGS = ('ve/cifar10_ncsnpp_continuous', 've/cifar10_ncsnpp_deep_continuous',
                   'vp/cifar10_ddpmpp_continuous')
DEFAULT_DTYPES = ('float32', 'bfloat16')

# Dense peak TFLOP/s by device kind (vendor data sheets, SXM parts): bfloat16 tensor cores,
# float32 on tensor cores as TF32, and plain (non-tensor) float32. H200 has the H100's compute.
PEAK_TFLOPS = {
    'H100': {'bfloat16': 989.0, 'tf32': 494.0, 'float32': 67.0},
    'H200': {'bfloat16': 989.0, 'tf32': 494.0, 'float32': 67.0},
    'A100': {'bfloat16': 312.0, 'tf32': 156.0, 'float32': 19.5},
}


def peak_tflops(device_kind: str) -> dict[str, float] | None:
  """Peak table of a `jax.Device.device_kind` string ('NVIDIA H100 80GB HBM3'), or None."""
  for key, peaks in PEAK_TFLOPS.items():
    if key in device_kind.upper():
      return peaks
  return None


def peak_fraction(tflops: float | None, dtype: str, device_kind: str) -> str:
  """'12.3%' of the dtype's peak; float32 against both TF32 and plain FP32 peaks.

  XLA runs float32 convolutions and matmuls on TF32 tensor cores on Ampere and newer at
  JAX's default precision, so TF32 is the relevant peak there; plain FP32 is shown too.
  """
  peaks = peak_tflops(device_kind)
  if peaks is None or tflops is None:
    return 'n/a'
  if dtype == 'bfloat16':
    return f'{100 * tflops / peaks["bfloat16"]:.1f}% of bf16'
  return (f'{100 * tflops / peaks["tf32"]:.1f}% of TF32, '
          f'{100 * tflops / peaks["float32"]:.0f}% of FP32')


def load_config(name: str, dtype: str, tiny: bool = False):
  """The config `configs/<name>.py` with `model.dtype = dtype`.

  `tiny` shrinks the network (nf 16, ch_mult (1, 2), one res block, attention at 16x16) so
  the script can be smoke-tested on a CPU; the numbers then mean nothing.
  """
  from configs import load_config as _load  # pylint: disable=import-outside-toplevel
  path = name if name.endswith('.py') else os.path.join(REPO_ROOT, 'configs', name + '.py')
  config = _load(path)
  config.model.dtype = dtype
  if tiny:
    config.model.nf = 16
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (config.data.image_size // 2,)
  return config


def cost_flops(cost: Any) -> float | None:
  """FLOPs from a `cost_analysis()` result (a dict, or a list of dicts in older jax)."""
  if cost is None:
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
    if cost is None:
      return None
  flops = cost.get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def compiled_info(jitted, *args) -> dict[str, Any]:
  """Compile `jitted` for `args`: the executable, compile seconds, FLOPs and memory.

  `flops` comes from the optimized executable's cost analysis (what the brief asks);
  `flops_hlo` from the lowered, unoptimized HLO, as a cross-check (some backends leave
  library calls such as cuDNN convolutions out of the executable's count).
  """
  t0 = time.perf_counter()
  lowered = jitted.lower(*args)
  compiled = lowered.compile()
  seconds = time.perf_counter() - t0
  info: dict[str, Any] = {'compiled': compiled, 'compile_s': seconds}
  try:
    info['flops'] = cost_flops(compiled.cost_analysis())
  except Exception:  # pylint: disable=broad-except  # not every backend implements it
    info['flops'] = None
  try:
    info['flops_hlo'] = cost_flops(lowered.cost_analysis())
  except Exception:  # pylint: disable=broad-except
    info['flops_hlo'] = None
  try:
    mem = compiled.memory_analysis()
    info['compiled_bytes'] = int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                                 + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
  except Exception:  # pylint: disable=broad-except
    info['compiled_bytes'] = None
  return info


def time_calls(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, list[float]]:
  """Median seconds of `fn()` (blocked until its outputs are ready) over `steps` calls.

  `fn` must return the arrays it computed; the first `warmup` calls are not timed.
  """
  import jax  # pylint: disable=import-outside-toplevel
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return statistics.median(times), times


def peak_memory_bytes() -> int | None:
  """Largest `peak_bytes_in_use` over the local devices (None where not reported, e.g. CPU)."""
  import jax  # pylint: disable=import-outside-toplevel
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None


def device_summary() -> dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel
  devices = jax.devices()
  return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
          'num_devices': len(devices), 'jax': jax.__version__}


def gib(n: int | None) -> str:
  return 'n/a' if n is None else f'{n / 2**30:.2f}'


def fmt(x: float | None, spec: str = '.1f') -> str:
  return 'n/a' if x is None else format(x, spec)


def run_cases(script: str, cases: Sequence[tuple[str, str]], child_args: Sequence[str],
              in_process: bool = False, run_one: Callable | None = None) -> list[dict]:
  """Runs every (config, dtype) case, each in a child process `script --_child`.

  Returns the cases' result dicts (an `error` entry where a case failed, e.g. out of
  memory, so one failure does not lose the other rows).
  """
  results = []
  for config_name, dtype in cases:
    if in_process:
      try:
        results.append(run_one(config_name, dtype))
      except Exception as e:  # pylint: disable=broad-except
        results.append({'config': config_name, 'dtype': dtype, 'error': f'{type(e).__name__}: {e}'})
      continue
    cmd = [sys.executable, script, '--_child', '--configs', config_name, '--dtypes', dtype,
           *child_args]
    print(f'# running {config_name} {dtype} ...', file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          check=False)
    line = next((l for l in reversed(proc.stdout.splitlines()) if l.startswith('{')), None)
    if proc.returncode != 0 or line is None:
      tail = proc.stderr.strip().splitlines()[-3:]
      results.append({'config': config_name, 'dtype': dtype,
                      'error': f'exit {proc.returncode}: {" | ".join(tail)}'})
      print(proc.stderr[-4000:], file=sys.stderr)
      continue
    results.append(json.loads(line))
  return results


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def add_common_args(parser, default_batch: int):
  parser.add_argument('--configs', nargs='+', default=list(DEFAULT_CONFIGS),
                      help='config names under configs/ (without .py) or paths')
  parser.add_argument('--dtypes', nargs='+', default=list(DEFAULT_DTYPES),
                      choices=['float32', 'bfloat16'], help='config.model.dtype values')
  parser.add_argument('--batch', type=int, default=default_batch, help='global batch size')
  parser.add_argument('--steps', type=int, default=10, help='timed calls (median reported)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls after compiling')
  parser.add_argument('--tiny', action='store_true',
                      help='shrink the networks (CPU smoke test; numbers are meaningless)')
  parser.add_argument('--in_process', action='store_true',
                      help='run all cases in this process (peak memory then accumulates)')
  parser.add_argument('--json', default=None, help='also write the results to this JSON file')
  parser.add_argument('--_child', action='store_true', help=__import__('argparse').SUPPRESS)


def child_args(args, extra: Sequence[str] = ()) -> list[str]:
  out = ['--batch', str(args.batch), '--steps', str(args.steps), '--warmup', str(args.warmup)]
  if args.tiny:
    out.append('--tiny')
  return out + list(extra)


def write_json(path: str | None, payload: dict):
  if path:
    with open(path, 'w') as f:
      json.dump(payload, f, indent=2, default=str)


def run_benchmark(name: str, script: str, args, run_one: Callable, table: Callable,
                  title: str, details: str, extra_child_args: Sequence[str] = ()):
  """The benchmarks' main(): as a child (`--_child`) runs its one case and prints the result
  as JSON; otherwise runs every (config, dtype) case, prints a header line (`title`, the
  device, `details`) and `table(results)`, and writes `--json`."""
  if args._child:  # pylint: disable=protected-access
    print(json.dumps(run_one(args.configs[0], args.dtypes[0], args), default=str))
    return
  cases = [(c, d) for c in args.configs for d in args.dtypes]
  results = run_cases(script, cases, child_args(args, extra_child_args),
                      in_process=args.in_process, run_one=lambda c, d: run_one(c, d, args))
  device = next((r for r in results if 'device_kind' in r), {})
  print(f'{title}: {device.get("num_devices", "?")} x {device.get("device_kind", "?")} '
        f'({device.get("platform", "?")}), jax {device.get("jax", "?")}, {details}'
        f'{", TINY networks (smoke test)" if args.tiny else ""}\n')
  print(table(results))
  write_json(args.json, {'benchmark': name, 'results': results})
