"""Score-based generative modeling through SDEs: training, evaluation and sampling runs.

  python main.py --mode train --config configs/ve/digits.py --workdir runs/digits_ve
  python main.py --mode eval  --config configs/ve/cifar10.py --workdir runs/cifar10_ve
  python main.py --mode sample --config configs/ve/digits.py --workdir runs/digits_ve
  python main.py --mode sample --config configs/ve/cifar10_ncsnpp_continuous.py \
      --checkpoint checkpoint_24.pth --num_samples 1000 --workdir runs/official
  python main.py --mode fid_stats --config configs/ve/cifar10.py --workdir assets/stats
  python main.py --mode export --config configs/ve/digits.py --workdir runs/digits_ve
  python main.py --mode train_gan --config configs/gan/digits.py --workdir runs/digits_gan
  python main.py --mode sample_gan --config configs/gan/digits.py --workdir runs/digits_gan

Config values are overridden on the command line: --config.training.batch_size=64.
On several hosts, run the same command on each with --multihost.
Mistakes in the input (config, data, checkpoints) end with one line naming the mistake and
exit status 2; anything else is a bug and keeps its traceback.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
# Exit status of a mistake in the input (scoresde_jax.errors.UserError, bad flags or config);
# any other exception is a bug and ends with its traceback (status 1).
USER_ERROR = 2
config_flags.DEFINE_config_file('config', None, 'Training/evaluation config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Work directory: checkpoints, samples, logs.')
flags.DEFINE_enum('mode', None,
                  ['train', 'eval', 'sample', 'fid_stats', 'train_classifier', 'export',
                   'train_gan', 'sample_gan'],
                  'What to run (export: the newest checkpoint as safetensors + config.json '
                  'in WORKDIR/export/step_<n>/; train_gan, sample_gan: a GAN config\'s GAN '
                  'and its DDLS latent Langevin samples).')
flags.DEFINE_string('eval_folder', 'eval', 'Folder under workdir for evaluation results.')
flags.DEFINE_integer('max_steps', None, 'Stop training after this many steps (of this run).')
flags.DEFINE_integer('num_samples', 64, '--mode sample, sample_gan: how many samples to write.')
flags.DEFINE_string('checkpoint', None,
                    '--mode sample: sample from this instead of the newest checkpoint of '
                    '--workdir: an official .pth or JAX checkpoint file (of --config), a '
                    'diffusers model folder, an export or another run directory.')
flags.DEFINE_bool('multihost', False,
                  'Join the other hosts of the job first (jax.distributed.initialize(), which '
                  'finds them on Cloud TPU, SLURM, Open MPI and Kubernetes; elsewhere set '
                  'JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES and JAX_PROCESS_ID). '
                  'Every host runs the same command.')
flags.DEFINE_string('compilation_cache', 'default',
                    "Directory of JAX's persistent compilation cache: a second start of the "
                    'same run skips XLA compilation, and a resumed training run loads its '
                    'compiled step from DIR/programs without tracing it. default: '
                    '$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/scoresde_jax/xla '
                    '(~/.cache/...); "none" turns both off.')
flags.DEFINE_string('cpu_devices', 'auto',
                    'Where JAX runs on the CPU: how many devices to split it into, each '
                    "taking its share of every batch on its own core. auto: one per core, as "
                    'many as divide the batch sizes of --mode; 1: one device (JAX\'s default). '
                    'No effect on a GPU or TPU, nor when XLA_FLAGS or JAX_NUM_CPU_DEVICES '
                    'already set the CPU device count.')


@flags.validator('cpu_devices')
def _check_cpu_devices(value: str) -> bool:
  from scoresde_jax import parallel  # pylint: disable=import-outside-toplevel
  if not parallel.is_cpu_devices_flag(value):
    raise flags.ValidationError(parallel.CPU_DEVICES_FLAG_ERROR)
  return True


flags.mark_flags_as_required(['workdir', 'config', 'mode'])

# Programs compiling faster than this are not worth a cache file (most are JAX's eager ops).
_CACHE_MIN_COMPILE_SECONDS = 0.5


# Modes that need a score model's config, and refuse a GAN config.
_SCORE_MODEL_MODES = ('train', 'eval', 'sample', 'train_classifier', 'export')


def run(mode, config, workdir, eval_folder='eval', max_steps=None, num_samples=64,
        checkpoint=None, program_dir=None):
  if mode in _SCORE_MODEL_MODES and 'gan' in config:
    from scoresde_jax import errors  # pylint: disable=import-outside-toplevel
    raise errors.ConfigError(f'--mode {mode} is for score models and this is a GAN config '
                             '(it has a `gan` section); use --mode train_gan or sample_gan.')
  if mode == 'train':
    from scoresde_jax.run import train  # pylint: disable=import-outside-toplevel
    train.train(config, workdir, max_steps=max_steps, program_dir=program_dir)
  elif mode == 'train_classifier':
    from scoresde_jax.run import train_classifier  # pylint: disable=import-outside-toplevel
    train_classifier.train_classifier(config, workdir, max_steps=max_steps,
                                       program_dir=program_dir)
  elif mode == 'eval':
    from scoresde_jax.run import evaluate  # pylint: disable=import-outside-toplevel
    evaluate.evaluate(config, workdir, eval_folder)
  elif mode == 'sample':
    from scoresde_jax.run import sample  # pylint: disable=import-outside-toplevel
    sample.sample(config, workdir, eval_folder, num_samples=num_samples, checkpoint=checkpoint)
  elif mode == 'fid_stats':
    from scoresde_jax.run import stats  # pylint: disable=import-outside-toplevel
    os.makedirs(workdir, exist_ok=True)
    stats.compute_dataset_stats(config, os.path.join(workdir, stats.stats_filename(config)))
  elif mode == 'export':
    from scoresde_jax.run import pretrained  # pylint: disable=import-outside-toplevel
    pretrained.export_run(config, workdir)
  elif mode == 'train_gan':
    from scoresde_jax.run import train_gan  # pylint: disable=import-outside-toplevel
    train_gan.train_gan(config, workdir, max_steps=max_steps, program_dir=program_dir)
  elif mode == 'sample_gan':
    from scoresde_jax.run import ddls  # pylint: disable=import-outside-toplevel
    ddls.sample_gan(config, workdir, eval_folder, num_samples=num_samples)


def parse_flags(argv):
  """absl's parsing, with config-file mistakes reported in one line.

  config_flags loads the file and applies --config.* overrides while parsing, raising plain
  OSError / AttributeError / TypeError for a missing file, an unknown key or a bad value.
  """
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
  except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:
    _config_error(e)
  sys.exit(USER_ERROR)


def _config_error(e):
  text = str(e).replace("\\'", "'").replace('\\n', '\n')
  lines = [line.strip().strip("'\"") for line in text.splitlines()]
  print(f'error: bad --config: {" ".join(line for line in lines if line)}', file=sys.stderr)
  sys.exit(USER_ERROR)


def compilation_cache_dir(flag: str) -> str | None:
  """The directory --compilation_cache names (None: off)."""
  if flag.lower() == 'none':
    return None
  if flag != 'default':
    return os.path.expanduser(flag)
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return os.environ['JAX_COMPILATION_CACHE_DIR']
  cache_home = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache_home, 'scoresde_jax', 'xla')


def _enable_compilation_cache(directory):
  import jax  # pylint: disable=import-outside-toplevel
  if directory is None:
    jax.config.update('jax_enable_compilation_cache', False)
    return
  jax.config.update('jax_compilation_cache_dir', directory)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', _CACHE_MIN_COMPILE_SECONDS)


# The batch sizes each mode splits evenly over the devices (the others round up themselves).
_DIVIDED_BATCHES = {
    'train': ('training', 'batch_size'),
    'eval': ('eval', 'batch_size'),
    'fid_stats': ('eval', 'batch_size'),
    'train_classifier': ('classifier', 'batch_size'),
    'train_gan': ('gan', 'batch_size'),
}


def cpu_device_count(flag: str, config, mode: str, cores: int | None = None) -> int:
  """The number of CPU devices --cpu_devices asks for (`parallel.split_cpu` says why)."""
  from scoresde_jax import parallel  # pylint: disable=import-outside-toplevel
  sizes = []
  if mode in _DIVIDED_BATCHES:
    section, field = _DIVIDED_BATCHES[mode]
    value = config[section][field] if section in config and field in config[section] else None
    if isinstance(value, int) and value > 0:  # a bad size gets its own error from the run
      sizes.append(value)
  return parallel.cpu_devices_from_flag(flag, sizes, cores)


def _join_hosts():
  import jax  # pylint: disable=import-outside-toplevel
  # JAX reads JAX_COORDINATOR_ADDRESS itself; the process count and index it only detects on
  # known clusters, so they may also come from the environment.
  kwargs = {key: int(os.environ[var]) for key, var in
            (('num_processes', 'JAX_NUM_PROCESSES'), ('process_id', 'JAX_PROCESS_ID'))
            if var in os.environ}
  jax.distributed.initialize(**kwargs)
  logging.info('Process %d of %d, %d of %d devices here.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)  # orbax's per-file progress lines
  try:
    config = FLAGS.config
    config.keys()  # a file that failed to load is an object raising on its first use
  except OSError as e:
    _config_error(e)
  from scoresde_jax import parallel  # pylint: disable=import-outside-toplevel
  parallel.split_cpu(cpu_device_count(FLAGS.cpu_devices, config, FLAGS.mode))
  cache_dir = compilation_cache_dir(FLAGS.compilation_cache)
  _enable_compilation_cache(cache_dir)
  if FLAGS.multihost:
    _join_hosts()
  from scoresde_jax import errors  # pylint: disable=import-outside-toplevel
  try:
    run(FLAGS.mode, config, FLAGS.workdir, FLAGS.eval_folder, FLAGS.max_steps,
        FLAGS.num_samples, FLAGS.checkpoint,
        program_dir=os.path.join(cache_dir, 'programs') if cache_dir else None)
  except errors.UserError as e:
    if os.environ.get('SCORESDE_DEBUG'):
      raise
    message = str(e).strip().strip('"') or type(e).__name__
    print(f'error: {message}  (SCORESDE_DEBUG=1 shows the traceback)', file=sys.stderr)
    sys.exit(USER_ERROR)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
