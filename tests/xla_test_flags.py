"""XLA flags of every test process: cheap CPU compilation.

Most of the suite's time is XLA compiling tiny programs, and much of that is LLVM optimizing
machine code that then runs for milliseconds. At backend optimization level 1 without LLVM's
expensive passes, a tiny training run with snapshot sampling takes 35 s instead of 46 s on
the 2-core machine, and tests/test_sampling.py, whose programs run longest, 116 s instead of
118 s (level 0 compiles faster still but made that file 50% slower). The programs compute
the same functions; floating-point results can differ in the last bits from a fully
optimized build, which no test depends on (comparisons between runs use one setting).
"""
FAST_COMPILE = '--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true'


def xla_flags(device_count: int | None = None) -> str:
  """XLA_FLAGS for a test subprocess, with `device_count` simulated host devices if given."""
  if device_count is None:
    return FAST_COMPILE
  return f'{FAST_COMPILE} --xla_force_host_platform_device_count={device_count}'
