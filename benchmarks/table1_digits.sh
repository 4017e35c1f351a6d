#!/usr/bin/env bash
# The paper's Table 1 at digits scale (issue 13), in two parts.
#
#   bash benchmarks/table1_digits.sh samples   # train VE and VP digits, 500 samples per
#                                              # sampler setting (a GPU: minutes; 2-core CPU:
#                                              # hours, ~0.4 s per score evaluation of 500)
#   bash benchmarks/table1_digits.sh fid       # FID of each setting and of 500 held-out real
#                                              # digits (the floor) with the real Inception
#                                              # weights, on any machine that has them
#
# Settings as `run.sweeps.paper_table1_sweep` (N = 1000): P1000 and P2000 with ancestral
# sampling, reverse diffusion and the probability flow; C2000 (Langevin); PC1000 with each
# predictor and Langevin. Samples: OUT/<sde>/table1/<setting>/samples_step_<n>.npz.
# Environment: OUT (default runs/table1), NUM (default 500), WEIGHTS (the Inception weights,
# default $SCORESDE_INCEPTION_TORCHSCRIPT), EXTRA (more --config.* overrides for train and
# sample, e.g. a shorter run). Prepared in session 4 and not yet run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/table1}
NUM=${NUM:-500}
# name predictor corrector probability_flow num_scales
SETTINGS=(
  "P1000_ancestral_sampling ancestral_sampling none False 1000"
  "P1000_reverse_diffusion reverse_diffusion none False 1000"
  "P1000_probability_flow reverse_diffusion none True 1000"
  "P2000_ancestral_sampling ancestral_sampling none False 2000"
  "P2000_reverse_diffusion reverse_diffusion none False 2000"
  "P2000_probability_flow reverse_diffusion none True 2000"
  "C2000 none langevin False 2000"
  "PC1000_ancestral_sampling ancestral_sampling langevin False 1000"
  "PC1000_reverse_diffusion reverse_diffusion langevin False 1000"
  "PC1000_probability_flow reverse_diffusion langevin True 1000"
)

samples() {
  for sde in ve vp; do
    config=configs/$sde/digits.py
    # shellcheck disable=SC2086  # EXTRA: more --config overrides, split on spaces
    python main.py --mode train --config "$config" --workdir "$OUT/$sde" ${EXTRA:-}
    for setting in "${SETTINGS[@]}"; do
      read -r name predictor corrector pf steps <<< "$setting"
      start=$(date +%s)
      python main.py --mode sample --config "$config" --workdir "$OUT/$sde" \
          --eval_folder "table1/$name" --num_samples "$NUM" --config.eval.batch_size="$NUM" \
          --config.sampling.method=pc --config.sampling.predictor="$predictor" \
          --config.sampling.corrector="$corrector" --config.sampling.probability_flow="$pf" \
          --config.model.num_scales="$steps" ${EXTRA:-}
      echo "$sde $name $(( $(date +%s) - start )) s" | tee -a "$OUT/seconds.txt"
    done
  done
}

fid() {
  weights=${WEIGHTS:-${SCORESDE_INCEPTION_TORCHSCRIPT:?set WEIGHTS or SCORESDE_INCEPTION_TORCHSCRIPT}}
  # The reference: the digits training split's statistics; the floor: 500 held-out digits.
  python - "$OUT" "$NUM" <<'PY'
import os, sys
import numpy as np
from scoresde_jax import datasets
out, num = sys.argv[1], int(sys.argv[2])
for split in ('train', 'eval'):
  images, _ = datasets.load_digits(split, image_size=8, num_channels=1)
  pixels = np.floor(images[:num if split == 'eval' else None] * 255 + 0.5).astype(np.uint8)
  np.savez(os.path.join(out, f'digits_{split}.npz'), samples=pixels)
PY
  python -m scoresde_jax.evaluation.fid "$OUT/digits_train.npz" --inception_weights "$weights" \
      --save_stats "$OUT/digits_train_stats.npz"
  echo "real held-out digits: $(python -m scoresde_jax.evaluation.fid "$OUT/digits_eval.npz" \
      "$OUT/digits_train_stats.npz" --inception_weights "$weights" | grep FID)"
  for sde in ve vp; do
    for setting in "${SETTINGS[@]}"; do
      read -r name _ <<< "$setting"
      samples=$(ls "$OUT/$sde/table1/$name"/samples_step_*.npz)
      echo "$sde $name: $(python -m scoresde_jax.evaluation.fid "$samples" \
          "$OUT/digits_train_stats.npz" --inception_weights "$weights" | grep FID)"
    done
  done
}

case "${1:-}" in
  samples) samples ;;
  fid) fid ;;
  *) echo "usage: bash benchmarks/table1_digits.sh samples|fid" >&2; exit 2 ;;
esac
