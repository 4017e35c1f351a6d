"""Draws `bash benchmarks/ddls_digits.sh`'s results: FID and judge confidence against the
number of Langevin steps, one line per step size, the score model and real held-out digits as
horizontal references (PIL; matplotlib is not in the project env).

  PYTHONPATH=. python benchmarks/ddls_plot.py runs/ddls_digits docs/ddls_digits.png

Reads OUT/judge.md and OUT/fid.txt as the script writes them.
"""
from __future__ import annotations

import math
import re
import sys

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
REFERENCE = {'score model': (255, 127, 14), 'real held-out digits': (127, 127, 127)}


def read(out: str):
  """{'fid' | 'judge': {step size: [(steps, value)]}}, {'fid' | 'judge': {reference: value}}."""
  curves, refs = {'fid': {}, 'judge': {}}, {'fid': {}, 'judge': {}}
  for line in open(f'{out}/judge.md'):
    cells = [c.strip() for c in line.strip().strip('|').split('|')]
    if len(cells) < 3 or not re.match(r'^[\d.]+$', cells[2]):
      continue
    if cells[0] == 'clean eval digits':
      refs['judge']['real held-out digits'] = float(cells[2])
    elif cells[0].startswith('score model'):
      refs['judge']['score model'] = float(cells[2])
    else:
      curves['judge'].setdefault(cells[0], []).append((int(cells[1]), float(cells[2])))
  for line in open(f'{out}/fid.txt'):
    fid = re.search(r'FID[^\d]*([\d.]+)', line)
    if not fid:
      continue
    value = float(fid.group(1))
    step = re.match(r'step size ([\d.]+), (\d+) steps', line)
    if step:
      curves['fid'].setdefault(step.group(1), []).append((int(step.group(2)), value))
    elif line.startswith('real held-out'):
      refs['fid']['real held-out digits'] = value
    elif line.startswith('score model'):
      refs['fid']['score model'] = value
  return curves, refs


def plot(curves, refs, path: str):
  pw, ph, ml, mt, mb, mr = 420, 280, 60, 30, 40, 15
  img = Image.new('RGB', (2 * pw, ph + 60), 'white')
  draw = ImageDraw.Draw(img)
  # Steps on a log axis with 0 drawn at the left edge (the generator alone).
  to_u = lambda k: 0.0 if k == 0 else (math.log10(k) + 0.3) / (math.log10(500) + 0.3)
  for i, (metric, title) in enumerate((('fid', 'FID vs Langevin steps'),
                                       ('judge', 'judge confidence vs Langevin steps'))):
    values = [v for c in curves[metric].values() for _, v in c] + list(refs[metric].values())
    if not values:
      continue
    lo, hi = min(values), max(values)
    pad = 0.08 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    x0, y0, w, h = i * pw + ml, mt, pw - ml - mr, ph - mt - mb
    to_px = lambda k, v: (x0 + to_u(k) * w, y0 + h - (v - lo) / (hi - lo) * h)
    draw.rectangle([x0, y0, x0 + w, y0 + h], outline='black')
    draw.text((x0 + 5, y0 - 20), title, fill='black')
    for k in (0, 10, 50, 100, 200, 500):
      px, _ = to_px(k, lo)
      draw.line([px, y0 + h, px, y0 + h + 4], fill='black')
      draw.text((px - 8, y0 + h + 6), str(k), fill='black')
    for frac in (0.0, 0.5, 1.0):
      v = lo + frac * (hi - lo)
      draw.text((x0 - 55, y0 + h - frac * h - 6), f'{v:.3g}', fill='black')
    for name, v in refs[metric].items():
      _, py = to_px(0, v)
      for xs in range(int(x0), int(x0 + w), 8):
        draw.line([xs, py, xs + 4, py], fill=REFERENCE[name])
    for color, (eps, points) in zip(COLORS, sorted(curves[metric].items())):
      xy = [to_px(k, v) for k, v in sorted(points)]
      draw.line(xy, fill=color, width=2)
      for px, py in xy:
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
  labels = [(f'DDLS, step size {eps}', c) for c, eps in zip(COLORS, sorted(curves['fid'] or
                                                                           curves['judge']))]
  labels += [(f'{name} (dashed)', c) for name, c in REFERENCE.items()]
  for j, (label, color) in enumerate(labels):
    lx, ly = 10 + j * (2 * pw // len(labels)), ph + 25
    draw.rectangle([lx, ly + 3, lx + 14, ly + 11], fill=color)
    draw.text((lx + 20, ly), label, fill='black')
  img.save(path)


if __name__ == '__main__':
  if len(sys.argv) != 3:
    sys.exit(__doc__)
  plot(*read(sys.argv[1]), sys.argv[2])
