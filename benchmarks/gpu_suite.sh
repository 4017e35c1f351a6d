#!/usr/bin/env bash
# Every speed benchmark of the headline configs on one GPU, in one command (issue 15):
#
#   bash benchmarks/gpu_suite.sh              # OUT=runs/gpu_suite; about 9 minutes on one H100/H200
#   SMOKE=1 bash benchmarks/gpu_suite.sh      # tiny networks and batches: checks the plumbing on a CPU
#
# Runs, for ve/cifar10_ncsnpp_continuous and vp/cifar10_ddpmpp_continuous in float32 and
# bfloat16: the training step at batch 128 (benchmarks/train_step.py), the forward pass at
# batch 1024 and the config's sampler (benchmarks/sampling.py); then the Inception features
# (benchmarks/inception.py). Writes OUT/gpu_suite.json (every benchmark's JSON) and
# OUT/gpu_suite.md (one table, with the reference's H100 numbers beside ours).
#
# Compilation dominates a cold run (each case compiles in its own process), so the suite
# compiles first, all eight cases at once (the machine's CPU cores compile in parallel; the
# GPU memory is not preallocated in that pass), into a JAX compilation cache under OUT; the
# measured pass, one case at a time, then loads its executables from that cache. Its
# "compile s" columns are therefore cache loads; the cold compile times are in
# OUT/compile_pass.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(mkdir -p "${OUT:-runs/gpu_suite}" && cd "${OUT:-runs/gpu_suite}" && pwd)
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR="$OUT/jax_cache"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
CONFIGS="ve/cifar10_ncsnpp_continuous vp/cifar10_ddpmpp_continuous"
if [[ -n "${SMOKE:-}" ]]; then
  size=(--tiny) train_batch=4 forward_batch=4 steps=2 inception=(--batch_size 4 --num_images 8 --repeats 2)
else
  size=() train_batch=128 forward_batch=1024 steps=10 inception=(--batch_size 500 --num_images 10000)
fi
train=(python benchmarks/train_step.py "${size[@]}" --batch "$train_batch")
sample=(python benchmarks/sampling.py "${size[@]}" --batch "$forward_batch" --sampler_steps 10)
start=$(date +%s)

echo "== compiling every case in parallel ($(nproc) CPU cores)"
{
  for config in $CONFIGS; do
    for dtype in float32 bfloat16; do
      # shellcheck disable=SC2086
      XLA_PYTHON_CLIENT_PREALLOCATE=false "${train[@]}" --configs $config --dtypes $dtype \
          --steps 1 --warmup 0 &
      XLA_PYTHON_CLIENT_PREALLOCATE=false "${sample[@]}" --configs $config --dtypes $dtype \
          --steps 1 --warmup 0 &
    done
  done
  wait
} > "$OUT/compile_pass.log" 2>&1
echo "   $(( $(date +%s) - start )) s"

echo "== training step"
# shellcheck disable=SC2086
"${train[@]}" --configs $CONFIGS --steps "$steps" --json "$OUT/train_step.json" \
    | tee "$OUT/train_step.md"
echo "== forward and sampler"
# shellcheck disable=SC2086
"${sample[@]}" --configs $CONFIGS --steps "$steps" --json "$OUT/sampling.json" \
    | tee "$OUT/sampling.md"
echo "== Inception"
python benchmarks/inception.py "${inception[@]}" --json "$OUT/inception.json" \
    | tee "$OUT/inception.md"

PYTHONPATH=. python - "$OUT" "$(( $(date +%s) - start ))" <<'PY'
import json, os, sys
from benchmarks import common
out, seconds = sys.argv[1], int(sys.argv[2])
# The reference's own numbers (score_sde_pytorch, torch 2.11, TF32, one H100; issue 15):
# training images/s at batch 128, forward evaluations/s at batch 1024.
reference = {'ve/cifar10_ncsnpp_continuous': (795, 3805), 'vp/cifar10_ddpmpp_continuous': (891, 3962)}
suite = {name: json.load(open(os.path.join(out, f'{name}.json')))
         for name in ('train_step', 'sampling', 'inception')}
suite['seconds'] = seconds
json.dump(suite, open(os.path.join(out, 'gpu_suite.json'), 'w'), indent=2, default=str)

def rows_by_case(name):
  return {(r['config'], r['dtype']): r for r in suite[name]['results']}

train, sampling = rows_by_case('train_step'), rows_by_case('sampling')
rows = []
for case in sorted(set(train) | set(sampling)):
  t, s = train.get(case, {}), sampling.get(case, {})
  ref_train, ref_forward = reference.get(case[0], (None, None))
  def ratio(ours, ref):
    return f'{ours / ref:.2f}x' if ours and ref else 'n/a'
  rows.append([case[0], case[1], common.fmt(t.get('images_per_s'), ',.0f'),
               ratio(t.get('images_per_s'), ref_train), common.fmt(s.get('forward_evals_per_s'), ',.0f'),
               ratio(s.get('forward_evals_per_s'), ref_forward),
               common.fmt(s.get('sampler_evals_per_s'), ',.0f'), t.get('error') or s.get('error') or ''])
i = suite['inception']
table = common.markdown_table(
    ['config', 'dtype', 'train img/s', 'vs reference H100', 'forward eval/s', 'vs reference H100',
     'sampler eval/s', 'error'], rows)
text = (f'# GPU suite: {i["num_devices"]} x {i["device_kind"]}, {seconds} s in all\n\n{table}\n\n'
        f'Inception ({i["weights"]}): {i["images_per_s"]:,.0f} images/s at batch {i["batch"]}; '
        f'{i["end_to_end_images_per_s"]:,.0f} images/s end to end over {i["num_images"]:,} images.\n')
open(os.path.join(out, 'gpu_suite.md'), 'w').write(text)
print(text)
PY
