#!/usr/bin/env bash
# DDLS on the digits DCGAN (Che et al. 2020): sample quality against the number of Langevin
# steps in the latent space, for two step sizes. In two parts:
#
#   bash benchmarks/ddls_digits.sh samples   # train the GAN (configs/gan/digits.py), run NUM
#                                            # chains of 500 steps per step size, recording the
#                                            # steps 0 (G alone), 10, 50, 100, 200, 500; print
#                                            # judge confidence, classes and D's mean logit
#   bash benchmarks/ddls_digits.sh fid       # FID of each (step size, steps) against the
#                                            # digits training split, and of NUM held-out real
#                                            # digits (the floor; there are 180), with the real
#                                            # Inception weights
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
  # The reference: the digits training split; the floor: NUM held-out digits (at most the
  # 180 there are); the samples of each recorded step as their own file.
  python - "$OUT" "$NUM" $STEP_SIZES <<'PY'
import os, sys
import numpy as np
from scoresde_jax import datasets
out, num, step_sizes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for split in ('train', 'eval'):
  images, _ = datasets.load_digits(split, image_size=8, num_channels=1)
  pixels = np.floor(images[:num if split == 'eval' else None] * 255 + 0.5).astype(np.uint8)
  np.savez(os.path.join(out, 'fid', f'digits_{split}.npz'), samples=pixels)
for eps in step_sizes:
  with np.load(os.path.join(out, 'gan', f'ddls_eps_{eps}', 'ddls', 'samples.npz')) as f:
    for k, pixels in zip(f['record_steps'], f['images']):
      np.savez(os.path.join(out, 'fid', f'eps_{eps}_step_{k}.npz'), samples=pixels)
PY
  # One process for every FID, so the Inception network compiles once (on a CPU each compile
  # costs about as much as scoring the images); the train statistics are kept and reused.
  score=''
  [[ -n "${SCORE_WORKDIR:-}" ]] && score=$(score_npz)
  python - "$OUT" "$NUM" "$weights" "$score" $STEP_SIZES <<'PY' | tee "$OUT/fid.txt"
import os, sys
import numpy as np
from scoresde_jax.evaluation import fid, metrics, weights
out, num, weights_path, score, step_sizes = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                             sys.argv[4], sys.argv[5:])
variables = weights.load_inception(weights_path)
folder = os.path.join(out, 'fid')
train_stats = os.path.join(folder, 'digits_train_stats.npz')
if not os.path.exists(train_stats):
  fid.compute_statistics(fid.sample_file_batches(os.path.join(folder, 'digits_train.npz'), num),
                         variables, path=train_stats)
reference = metrics.load_statistics(train_stats)

def fid_of(path):
  stats = fid.load_side(path, lambda: variables, batch_size=num)
  return metrics.frechet_distance(stats['mu'], stats['sigma'], reference['mu'], reference['sigma'])

heldout = os.path.join(folder, 'digits_eval.npz')
with np.load(heldout) as f:
  count = len(f['samples'])
print(f'real held-out digits ({count}): FID: {fid_of(heldout):.6f}', flush=True)
for eps in step_sizes:
  for k in (0, 10, 50, 100, 200, 500):
    value = fid_of(os.path.join(folder, f'eps_{eps}_step_{k}.npz'))
    print(f'step size {eps}, {k} steps: FID: {value:.6f}', flush=True)
if score:
  print(f'score model: FID: {fid_of(score):.6f}', flush=True)
PY
}

case "${1:-}" in
  samples) samples ;;
  fid) fid ;;
  plot) PYTHONPATH=. python benchmarks/ddls_plot.py "$OUT" "$OUT/ddls_digits.png" ;;
  *) echo "usage: bash benchmarks/ddls_digits.sh samples|fid|plot" >&2; exit 2 ;;
esac
