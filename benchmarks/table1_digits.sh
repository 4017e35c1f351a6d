#!/usr/bin/env bash
# The paper's Table 1 at digits scale (issue 13), in two parts.
#
#   bash benchmarks/table1_digits.sh samples   # train VE and VP digits, 500 samples per
#                                              # sampler setting (2-core CPU: about 75
#                                              # minutes a SDE, 0.18 s per score evaluation
#                                              # of 500)
#   bash benchmarks/table1_digits.sh fid       # FID of each setting, of the 180 held-out
#                                              # digits and of 500 train digits (the floors)
#                                              # with the real Inception weights, on any
#                                              # machine that has them, in one process
#                                              # (benchmarks/digits_fid.py)
#
# Settings as `run.sweeps.paper_table1_sweep` (N = 1000): P1000 and P2000 with ancestral
# sampling, reverse diffusion and the probability flow; C2000 (Langevin); PC1000 with each
# predictor and Langevin. Samples: OUT/<sde>/table1/<setting>/samples_step_<n>.npz.
# Environment: OUT (default runs/table1), NUM (default 500), WEIGHTS (the Inception weights,
# default $SCORESDE_INCEPTION_TORCHSCRIPT), SDES (default "ve vp": which halves of the table),
# EXTRA (more --config.* overrides for train and sample, e.g. a shorter run). Rerunning
# `samples` after an interruption continues it.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/table1}
NUM=${NUM:-500}
SDES=${SDES:-ve vp}
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
  for sde in $SDES; do
    config=configs/$sde/digits.py
    # shellcheck disable=SC2086  # EXTRA: more --config overrides, split on spaces
    python main.py --mode train --config "$config" --workdir "$OUT/$sde" ${EXTRA:-}
    for setting in "${SETTINGS[@]}"; do
      read -r name predictor corrector pf steps <<< "$setting"
      # Rerunning after an interruption skips the settings already sampled (a training run
      # that is done only restores its checkpoint).
      if compgen -G "$OUT/$sde/table1/$name/samples_step_*.npz" > /dev/null; then
        continue
      fi
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
  files=()
  for sde in $SDES; do
    for setting in "${SETTINGS[@]}"; do
      read -r name _ <<< "$setting"
      files+=("$sde $name=$(ls "$OUT/$sde/table1/$name"/samples_step_*.npz)")
    done
  done
  python benchmarks/digits_fid.py --weights "$weights" --work "$OUT" "${files[@]}" \
      | tee "$OUT/fid.txt"
}

case "${1:-}" in
  samples) samples ;;
  fid) fid ;;
  *) echo "usage: bash benchmarks/table1_digits.sh samples|fid" >&2; exit 2 ;;
esac
