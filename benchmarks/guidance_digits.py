"""Classifier-free guidance on digits: does the guidance scale steer a class-conditional model?

Takes a run of a class-conditional score model (`model.num_classes = 10`), samples
`--num_per_class` digits of each class with the guided score
(1 + w) s(x, t, y) - w s(x, t, null) for each scale w, and reports the accuracy of the same
separate judge as benchmarks/conditional_digits.py (the classifier-guidance table beside it):
a logistic regression on the clean digits train split. Unlike classifier guidance, w = 0 is
already conditional (the model as trained).

    python main.py --mode train --config configs/vp/digits.py --workdir W \\
        --config.model.num_classes=10 --config.training.snapshot_sampling=False
    python benchmarks/guidance_digits.py --workdir W --sampler pc --steps 250
    python benchmarks/guidance_digits.py --workdir W --sampler dpm_solver_2m --steps 20

All samples of one scale run as one batch. The guidance scale is a static part of the score
function, so each scale compiles its own sampler (seconds below include that).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.dirname(os.path.abspath(__file__))):
  if path not in sys.path:
    sys.path.insert(0, path)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conditional_digits import (  # noqa: E402
    add_guided_sampling_args, build_sampler, fit_judge, judge_scales)
from scoresde_jax import pretrained  # noqa: E402
from scoresde_jax.run import data  # noqa: E402


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='the class-conditional training run')
  add_guided_sampling_args(parser, fast_solver_steps=20)
  args = parser.parse_args(argv)

  model = pretrained.load(args.workdir)
  config = model.config
  num_classes = int(config.model.num_classes)
  if not num_classes:
    sys.exit(f'{args.workdir} holds an unconditional model (model.num_classes = 0).')
  scales = [float(s) for s in args.scales.split(',')]
  steps = args.steps or (int(config.model.num_scales) if args.sampler == 'pc' else 20)
  labels = np.repeat(np.arange(num_classes), args.num_per_class).astype(np.int32)
  shape = (len(labels), config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler = build_sampler(config, shape, args.sampler, steps)
  inverse_scaler = data.get_data_inverse_scaler(config)
  judge, judge_clean = fit_judge(config.data.image_size)

  print(f'device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); model '
        f'{args.workdir} step {model.step} ({config.training.sde}); sampler {args.sampler}, '
        f'{steps} steps; {args.num_per_class} samples x {num_classes} classes per scale')
  print(f'judge (logistic regression, clean digits): eval accuracy {judge_clean:.3f}')
  rows = judge_scales(
      sampler, lambda scale: model.guided_score_fn(labels, guidance_scale=scale), scales,
      labels, judge, inverse_scaler, args.seed,
      args.grid_dir and os.path.join(args.grid_dir, args.sampler + '_scale_{scale:g}.png'),
      args.num_per_class)

  print()
  print('| guidance scale w | judge accuracy on samples | worst class | judge confidence | '
        'NFE (network calls) | seconds |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    # With w != 0 every score evaluation is one call on the doubled batch.
    print(f'| {r["scale"]:g} | {r["accuracy"]:.3f} | {r["worst_class"]:.2f} | '
          f'{r["confidence"]:.3f} | {r["nfe"]} | {r["seconds"]:.0f} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'judge_clean_accuracy': judge_clean, 'sampler': args.sampler, 'steps': steps,
                 'step': model.step, 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  main()
