"""Class-conditional sampling on digits: does the time-dependent classifier steer the samples?

Takes a trained score model and a trained noise-conditional classifier, samples
`--num_per_class` digits of each requested class with the conditional score
score(x, t) + scale * grad_x log p_t(y | x) (`controllable.conditional_score_fn`), and
measures, for each classifier scale, the accuracy of a SEPARATE judge on the samples: a
multinomial logistic regression (scikit-learn) trained on the clean digits train split,
whose accuracy on the clean eval split is printed first. Scale 0 is unconditional
sampling: its "accuracy" is the fraction of samples that happen to show the requested
digit (about 10%).

    python main.py --mode train --config configs/ve/digits.py --workdir W
    python main.py --mode train_classifier --config configs/ve/digits_classifier.py --workdir W
    python benchmarks/conditional_digits.py --score_workdir W --classifier_workdir W

Options: --sampler pc (the config's predictor-corrector sampler with --steps time steps;
default the config's num_scales, 2 evaluations per step) or one of the fast ODE solvers
(dpm_solver_2m, dpm_solver_3m, ddim, heun; --steps solver steps); --scales 0,1,2,4;
--classes 0,...,9; --num_per_class; --grid_dir saves a PNG grid per scale (rows = classes).
All samples of one scale run as one batch; the sampler is compiled once for all scales (the
scale and labels are inputs of the compiled program).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import configs  # noqa: E402
from scoresde_jax import checkpoints, controllable, datasets, fast_solvers  # noqa: E402
from scoresde_jax.run import data, images, loop, setup, train_classifier  # noqa: E402


def fit_judge(image_size: int):
  """Logistic regression on the clean digits train split (8x8, flattened, in [0, 1])."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=import-outside-toplevel
  x_train, y_train = datasets.load_digits('train', image_size)
  x_eval, y_eval = datasets.load_digits('eval', image_size)
  judge = LogisticRegression(max_iter=5000, C=1.0)
  judge.fit(x_train.reshape(len(x_train), -1), y_train)
  clean = float(np.mean(judge.predict(x_eval.reshape(len(x_eval), -1)) == y_eval))
  return judge, clean


def judge_samples(judge, samples, labels) -> dict:
  """The judge's verdict on `samples` [N, H, W, C] in [0, 1] meant to show `labels` [N]:
  accuracy, worst per-class accuracy, per-class accuracies, histogram of predicted digits
  and mean confidence (max class probability)."""
  flat = np.asarray(samples).reshape(len(samples), -1)
  y = np.asarray(labels)
  pred = judge.predict(flat)
  per_class = {int(c): float(np.mean(pred[y == c] == c)) for c in np.unique(y)}
  return {'accuracy': float(np.mean(pred == y)), 'worst_class': min(per_class.values()),
          'per_class': per_class, 'predicted_histogram': np.bincount(pred, minlength=10).tolist(),
          'confidence': float(judge.predict_proba(flat).max(axis=1).mean())}


def judge_scales(sampler, score_fn_of, scales, labels, judge, inverse_scaler, seed: int,
                 grid_path: str = '', nrow: int = 10) -> list[dict]:
  """For each scale: samples of `sampler` with `score_fn_of(scale)`, judged
  (`judge_samples`), with NFE and seconds; grids to `grid_path.format(scale=...)` if given."""
  rows = []
  for scale in scales:
    start = time.time()
    samples, nfe = sampler(jax.random.PRNGKey(seed), score_fn_of(scale))
    samples = np.clip(np.asarray(inverse_scaler(jax.device_get(samples))), 0.0, 1.0)
    seconds = time.time() - start
    row = dict(scale=scale, **judge_samples(judge, samples, labels), nfe=int(nfe),
               seconds=seconds)
    rows.append(row)
    print(f'scale {scale:g}: accuracy {row["accuracy"]:.3f} ({seconds:.0f} s)', flush=True)
    if grid_path:
      path = grid_path.format(scale=scale)
      os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
      images.save_grid(samples, path, nrow=nrow, scale=8)
  return rows


def check_score_workdir(config, workdir):
  """Refuses a score-model run whose saved config disagrees with `config` on data / SDE / model."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: --score_workdir must be a training run directory.')
  with open(path) as f:
    saved = loop.flatten(json.load(f))
  current = loop.flatten(loop.config_json(config))
  # Keys present in both (configs gain keys over time; a missing key took its default).
  differing = sorted(k for k in set(saved) & set(current)
                     if k.startswith(('model.', 'data.', 'training.sde', 'training.continuous'))
                     and saved[k] != current[k])
  if differing:
    raise ValueError(f'The score model in {workdir} was trained with another config: '
                     + ', '.join(f'{k}: {saved[k]!r} vs {current[k]!r}' for k in differing[:5]))


def build_sampler(config, shape, name, steps):
  """The config's PC sampler with `steps` time steps, or a fast solver with `steps` steps."""
  if name == 'pc':
    return setup.get_sampler(config, shape, overrides={'method': 'pc', 'num_scales': steps,
                                                       'probability_flow': False})
  return setup.get_sampler(config, shape, overrides={'method': name, 'fast': {'steps': steps}})


def add_guided_sampling_args(parser, fast_solver_steps: int):
  """The sampler, guidance scales and outputs of a guided-sampling sweep (also
  guidance_digits.py)."""
  parser.add_argument('--sampler', default='pc',
                      choices=['pc'] + fast_solvers.fast_sampler_names())
  parser.add_argument('--steps', type=int, default=None,
                      help='PC time steps (default model.num_scales) or fast-solver steps '
                      f'(default {fast_solver_steps})')
  parser.add_argument('--scales', default='0,1,2,4')
  parser.add_argument('--num_per_class', type=int, default=10)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--grid_dir', default='')
  parser.add_argument('--json', default='', help='also write the results here')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--score_workdir', required=True)
  parser.add_argument('--classifier_workdir', required=True,
                      help='workdir whose classifier/ holds the classifier checkpoints')
  parser.add_argument('--config', default=os.path.join(ROOT, 'configs/ve/digits_classifier.py'))
  parser.add_argument('--score_step', type=int, default=None, help='default: the last snapshot')
  parser.add_argument('--classifier_step', type=int, default=None)
  parser.add_argument('--classes', default='0,1,2,3,4,5,6,7,8,9')
  add_guided_sampling_args(parser, fast_solver_steps=50)
  args = parser.parse_args(argv)

  config = configs.load_config(args.config)
  check_score_workdir(config, args.score_workdir)
  classes = [int(c) for c in args.classes.split(',')]
  scales = [float(s) for s in args.scales.split(',')]
  steps = args.steps or (int(config.model.num_scales) if args.sampler == 'pc' else 50)

  sde = setup.get_sde(config)
  model, template = setup.model_and_template(config)
  snaps = checkpoints.RunCheckpoints(args.score_workdir, asynchronous=False)
  score_step = args.score_step if args.score_step is not None else max(snaps.snapshot_steps())
  snaps.close()
  state = checkpoints.restore_snapshot(args.score_workdir, template, score_step)
  score_fn = setup.get_score_fn(config, sde, model, state.ema_params)
  log_prob_fn = train_classifier.get_classifier_log_prob_fn(config, args.classifier_workdir,
                                                            args.classifier_step)
  clf_acc = train_classifier.eval_accuracy(config, log_prob_fn.args[0], (0.01, 0.1, 0.3, 1.0))

  judge, judge_clean = fit_judge(config.data.image_size)
  labels = jnp.asarray(np.repeat(classes, args.num_per_class), jnp.int32)
  shape = (len(labels), config.data.image_size, config.data.image_size, config.data.num_channels)
  sampler = build_sampler(config, shape, args.sampler, steps)
  inverse_scaler = data.get_data_inverse_scaler(config)

  print(f'device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); score model '
        f'{args.score_workdir} step {score_step}; sampler {args.sampler}, {steps} steps; '
        f'{args.num_per_class} samples x {len(classes)} classes per scale')
  print(f'judge (logistic regression, clean digits): eval accuracy {judge_clean:.3f}')
  print('noise-conditional classifier, eval accuracy: '
        + ', '.join(f'sigma {s:g}: {a:.3f}' for s, a in clf_acc.items()))
  rows = judge_scales(
      sampler, lambda scale: controllable.conditional_score_fn(score_fn, log_prob_fn, labels,
                                                               scale),
      scales, labels, judge, inverse_scaler, args.seed,
      args.grid_dir and os.path.join(args.grid_dir, 'scale_{scale:g}.png'), args.num_per_class)

  print()
  print('| classifier scale | judge accuracy on samples | worst class | judge histogram of '
        'predicted digits | NFE (score + classifier grad) | seconds |')
  print('|---|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["scale"]:g} | {r["accuracy"]:.3f} | {r["worst_class"]:.2f} | '
          f'{r["predicted_histogram"]} | {r["nfe"]} | {r["seconds"]:.0f} |')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'judge_clean_accuracy': judge_clean, 'classifier_accuracy': clf_acc,
                 'sampler': args.sampler, 'steps': steps, 'score_step': score_step,
                 'rows': rows}, f, indent=2)


if __name__ == '__main__':
  main()
