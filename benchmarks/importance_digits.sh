#!/usr/bin/env bash
# Likelihood training with and without importance sampling of t (issue 16), at digits scale:
# two sub-VP digits runs with the likelihood weighting g(t)^2, equal steps and seeds, one
# drawing t uniformly and one from q(t) ~ g(t)^2 / std(t)^2, then bits/dim of the held-out
# digits under the probability-flow ODE (uniformly dequantized, one repeat) at the last
# snapshot. Environment: OUT (default runs/importance), STEPS (default 1000), BPD_BATCH and
# BPD_BATCHES (default 64 and 1: the first 64 of the 180 held-out digits).
#
#   bash benchmarks/importance_digits.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/importance}
mkdir -p "$OUT"
STEPS=${STEPS:-1000}
BPD_BATCH=${BPD_BATCH:-64}
BPD_BATCHES=${BPD_BATCHES:-1}
config=configs/subvp/digits.py
common=(--config "$config" --config.training.likelihood_weighting=True
        --config.training.n_iters="$STEPS" --config.training.snapshot_freq="$STEPS"
        --config.training.snapshot_sampling=False)
run() {  # train, then bits/dim at the last snapshot
  local importance=$1 workdir="$OUT/importance_$1"
  python main.py --mode train --workdir "$workdir" "${common[@]}" \
      --config.training.importance_weighting="$importance"
  # Bits/dim of the first BPD_BATCHES batches of BPD_BATCH held-out digits (eval.bpd_num_batches
  # is no config key, so not a --config flag: the evaluation is called from Python).
  python - "$workdir" "$importance" "$STEPS" "$BPD_BATCH" "$BPD_BATCHES" <<'PY'
import sys
from configs import load_config
from scoresde_jax.run import evaluate
workdir, importance, steps, batch, batches = sys.argv[1:]
config = load_config('configs/subvp/digits.py')
config.training.update(likelihood_weighting=True, importance_weighting=importance == 'True',
                       n_iters=int(steps), snapshot_freq=int(steps), snapshot_sampling=False)
config.eval.update(enable_bpd=True, enable_sampling=False, enable_loss=True, bpd_num_repeats=1,
                   begin_ckpt=1, end_ckpt=1, batch_size=int(batch))
config.eval.bpd_num_batches = int(batches)
evaluate.evaluate(config, workdir, 'eval')
PY
}
# The two runs side by side (one per core of a 2-core machine).
run False > "$OUT/importance_False.log" 2>&1 &
run True > "$OUT/importance_True.log" 2>&1 &
wait %1 && wait %2
python - "$OUT" "$STEPS" <<'PY'
import json, sys
out, steps = sys.argv[1], sys.argv[2]
print(f'| t sampling (likelihood weighting, sub-VP digits, {steps} steps) | eval loss | '
      'bits/dim (held-out digits) | bpd NFE | bpd seconds |')
print('|---|---|---|---|---|')
for importance in ('False', 'True'):
  with open(f'{out}/importance_{importance}/eval/ckpt_1.json') as f:
    r = json.load(f)
  name = 'q(t) ~ g^2 / std^2 (importance)' if importance == 'True' else 'uniform'
  print(f"| {name} | {r['loss']:.2f} | {r['bpd']:.3f} | {r['bpd_nfe']:.0f} | "
        f"{r['bpd_seconds']:.0f} |")
PY
