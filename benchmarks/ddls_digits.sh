#!/usr/bin/env bash
# DDLS on the digits DCGAN (Che et al. 2020): sample quality against the number of Langevin
# steps in the latent space, for two step sizes. In two parts:
#
#   bash benchmarks/ddls_digits.sh samples   # train the GAN (configs/gan/digits.py), run NUM
#                                            # chains of 500 steps per step size, recording the
#                                            # steps 0 (G alone), 10, 50, 100, 200, 500; print
#                                            # judge confidence, classes and D's mean logit
#   bash benchmarks/ddls_digits.sh fid       # FID of each (step size, steps) against the
#                                            # digits training split, and of the 180 held-out
#                                            # digits (the floor), with the real Inception
#                                            # weights (benchmarks/digits_fid.py)
#   bash benchmarks/ddls_digits.sh plot      # OUT/ddls_digits.png: both against the steps
#
# The judge is benchmarks/digits_samplers.py's: a logistic regression fit on the clean train
# digits; its mean max-probability over the samples ("judge confidence") and the number of
# digit classes it sees (a collapse shows there). Samples: OUT/gan/ddls_eps_<eps>/ddls/
# samples.npz (all recorded steps), split into OUT/fid/eps_<eps>_step_<k>.npz for FID.
# Beside them, the same measures of NUM samples of a trained digits score model with its
# config's sampler (SCORE_CONFIG, default configs/ve/digits.py; SCORE_WORKDIR, a finished
# `main.py --mode train` run of it; skipped when unset): the two families on one scale.
# Environment: OUT (default runs/ddls_digits), NUM (default 1000), STEP_SIZES (default
# "0.01 0.1"), WEIGHTS (the Inception weights, default $SCORESDE_INCEPTION_TORCHSCRIPT), EXTRA
# (more --config.* overrides for the GAN commands, e.g. a shorter training run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/ddls_digits}
NUM=${NUM:-1000}
STEP_SIZES=${STEP_SIZES:-0.01 0.1}
STEPS="(0, 10, 50, 100, 200, 500)"
config=configs/gan/digits.py
SCORE_CONFIG=${SCORE_CONFIG:-configs/ve/digits.py}
score_npz() { ls "$SCORE_WORKDIR"/ddls_score_model/samples_*.npz; }

samples() {
  # shellcheck disable=SC2086  # EXTRA: more --config overrides, split on spaces
  python main.py --mode train_gan --config "$config" --workdir "$OUT/gan" ${EXTRA:-}
  for eps in $STEP_SIZES; do
    start=$(date +%s)
    # shellcheck disable=SC2086
    python main.py --mode sample_gan --config "$config" --workdir "$OUT/gan" \
        --eval_folder "ddls_eps_$eps" --num_samples "$NUM" --config.ddls.n_steps=500 \
        --config.ddls.step_size="$eps" --config.ddls.record_steps="$STEPS" ${EXTRA:-}
    echo "step size $eps: $(( $(date +%s) - start )) s" | tee -a "$OUT/seconds.txt"
  done
  score=''
  if [[ -n "${SCORE_WORKDIR:-}" ]]; then
    start=$(date +%s)
    python main.py --mode sample --config "$SCORE_CONFIG" --workdir "$SCORE_WORKDIR" \
        --eval_folder ddls_score_model --num_samples "$NUM"
    echo "score model ($SCORE_CONFIG): $(( $(date +%s) - start )) s" | tee -a "$OUT/seconds.txt"
    score=$(score_npz)
  fi
  PYTHONPATH=.:benchmarks python - "$OUT" "$score" $STEP_SIZES <<'PY' | tee "$OUT/judge.md"
import os, sys
import numpy as np
from conditional_digits import fit_judge
from scoresde_jax import datasets

out, score, step_sizes = sys.argv[1], sys.argv[2], sys.argv[3:]
judge, clean_accuracy = fit_judge(8)

def judged(pixels):
  probs = judge.predict_proba(pixels.reshape(len(pixels), -1).astype(np.float64) / 255.0)
  counts = np.bincount(probs.argmax(1), minlength=10)
  return probs.max(1).mean(), (counts > 0).sum(), counts.max() / len(pixels)

real, _ = datasets.load_digits('eval', image_size=8, num_channels=1)
confidence, classes, top = judged(np.floor(real * 255 + 0.5))
print('| step size | steps | judge confidence | classes (top share) | mean logit d(G(z)) |')
print('|---|---|---|---|---|')
print(f'| clean eval digits | - | {confidence:.3f} | {classes} ({top:.2f}) | - |')
for eps in step_sizes:
  with np.load(os.path.join(out, 'gan', f'ddls_eps_{eps}', 'ddls', 'samples.npz')) as f:
    for k, pixels, logits in zip(f['record_steps'], f['images'], f['logits']):
      confidence, classes, top = judged(pixels)
      print(f'| {eps} | {k} | {confidence:.3f} | {classes} ({top:.2f}) | {logits.mean():.3f} |')
if score:
  with np.load(score) as f:
    confidence, classes, top = judged(f['samples'])
  print(f'| score model, its config\'s sampler | - | {confidence:.3f} | {classes} ({top:.2f}) | - |')
PY
}

fid() {
  weights=${WEIGHTS:-${SCORESDE_INCEPTION_TORCHSCRIPT:?set WEIGHTS or SCORESDE_INCEPTION_TORCHSCRIPT}}
  mkdir -p "$OUT/fid"
  # The samples of each recorded step as their own file.
  python - "$OUT" $STEP_SIZES <<'PY'
import os, sys
import numpy as np
out, step_sizes = sys.argv[1], sys.argv[2:]
for eps in step_sizes:
  with np.load(os.path.join(out, 'gan', f'ddls_eps_{eps}', 'ddls', 'samples.npz')) as f:
    for k, pixels in zip(f['record_steps'], f['images']):
      np.savez(os.path.join(out, 'fid', f'eps_{eps}_step_{k}.npz'), samples=pixels)
PY
  files=()
  for eps in $STEP_SIZES; do
    for k in 0 10 50 100 200 500; do
      files+=("step size $eps, $k steps=$OUT/fid/eps_${eps}_step_$k.npz")
    done
  done
  [[ -n "${SCORE_WORKDIR:-}" ]] && files+=("score model=$(score_npz)")
  python benchmarks/digits_fid.py --weights "$weights" --work "$OUT/fid" --batch_size "$NUM" \
      "${files[@]}" | tee "$OUT/fid.txt"
}

case "${1:-}" in
  samples) samples ;;
  fid) fid ;;
  plot) PYTHONPATH=. python benchmarks/ddls_plot.py "$OUT" "$OUT/ddls_digits.png" ;;
  *) echo "usage: bash benchmarks/ddls_digits.sh samples|fid|plot" >&2; exit 2 ;;
esac
