"""Per-task Caffe SGD (train.optimizer: sgd): the update equals Caffe's by hand, slots and schedule per task,
checkpoints exactly, config errors name the key, the Noroozi configs select it, and a tiny Jigsaw AlexNet learns."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf

from mtssl_tf.configs import ConfigError, load_config
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.tasks import build_tasks
from mtssl_tf.tasks.multitask import MultiTaskModel
from mtssl_tf.train import optim
from mtssl_tf.train.experiment import ExperimentConfig, TrainConfig
from mtssl_tf.train.local import LocalTrainer
from mtssl_tf.train.optim import PerTaskSGD, caffe_rate
from mtssl_tf.train.rmsprop import PerTaskRMSProp

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _caffe_sgd(w, b, grads, base_lr, momentum, weight_decay, gamma, stepsize, bias_lr_mult, bias_decay_mult):
  """Caffe SGDSolver (sgd_solver.cpp: Regularize, ComputeUpdateValue, Update) in float64, by hand."""
  w, b = w.astype(np.float64), b.astype(np.float64)
  hw, hb = np.zeros_like(w), np.zeros_like(b)
  for it, (gw, gb) in enumerate(grads):
    rate = base_lr * gamma ** (it // stepsize)
    dw = gw + weight_decay * 1.0 * w  # Weights: decay_mult 1, lr_mult 1.
    db = gb + weight_decay * bias_decay_mult * b
    hw = momentum * hw + rate * 1.0 * dw
    hb = momentum * hb + rate * bias_lr_mult * db
    w, b = w - hw, b - hb
  return w, b, hw, hb


@pytest.mark.numerics
def test_update_equals_caffe_sgd_by_hand():
  rng = np.random.default_rng(0)
  w0 = rng.normal(0, 1, (3, 4)).astype(np.float32)
  b0 = rng.normal(0, 1, (4,)).astype(np.float32)
  grads = [(rng.normal(0, 1, w0.shape).astype(np.float32), rng.normal(0, 1, b0.shape).astype(np.float32))
           for _ in range(7)]  # fmt: skip
  # A step of the schedule inside the run (after 3 updates) and a large decay, so every term matters.
  settings = dict(base_lr=0.1, momentum=0.9, weight_decay=0.05, gamma=0.1, stepsize=3, bias_lr_mult=2.0,
                  bias_decay_mult=0.0)  # fmt: skip
  w = tf.Variable(w0, name='dense/kernel')
  b = tf.Variable(b0, name='dense/bias')
  opt = PerTaskSGD(
    {'t': [w, b]}, settings['base_lr'], settings['momentum'], settings['weight_decay'], 'step', settings['gamma'],
    settings['stepsize'], settings['bias_lr_mult'], settings['bias_decay_mult'],
  )  # fmt: skip
  for gw, gb in grads:
    opt.apply('t', [(tf.constant(gw), w), (tf.constant(gb), b)])
  want_w, want_b, hist_w, hist_b = _caffe_sgd(w0, b0, grads, **settings)
  # float32 against float64: each update rounds ~5 operations (<= 0.5 ulp, 6e-8 relative, each) on values of
  # size ~1; over 7 updates the error stays below ~1e-6 of the largest magnitude involved (weights, history).
  # 1e-5 absolute leaves a margin for fused multiply-add vs separate rounding on other instruction sets.
  np.testing.assert_allclose(w.numpy(), want_w, rtol=0, atol=1e-5)
  np.testing.assert_allclose(b.numpy(), want_b, rtol=0, atol=1e-5)
  # The slot stores minus Caffe's history (Keras momentum's accumulator).
  np.testing.assert_allclose(-opt.slot('t', w).numpy(), hist_w, rtol=0, atol=1e-5)
  np.testing.assert_allclose(-opt.slot('t', b).numpy(), hist_b, rtol=0, atol=1e-5)
  assert int(opt.iterations['t']) == 7
  # The bias multipliers are really in play: a run treating the bias as a weight ends elsewhere.
  _, as_weight, _, _ = _caffe_sgd(w0, b0, grads, **dict(settings, bias_lr_mult=1.0, bias_decay_mult=1.0))
  assert np.abs(as_weight - want_b).max() > 1e-2


def test_schedule_values_are_caffes_step_and_fixed():
  # solver_cfn_jps.prototxt: base_lr 0.01, step, gamma 0.1, stepsize 100000.
  rates = [caffe_rate(0.01, 'step', 0.1, 100_000, it) for it in (0, 99_999, 100_000, 199_999, 200_000, 349_999)]
  np.testing.assert_allclose(rates, [0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-12)
  assert caffe_rate(1e-5, 'fixed', 0.1, 1, 10**6) == 1e-5
  w = tf.Variable([1.0], name='w/kernel')
  opt = PerTaskSGD({'a': [w], 'b': [w]}, 0.01, lr_stepsize=2)
  seen = []
  for _ in range(5):
    seen.append(float(opt.rate('a')))
    opt.apply('a', [(tf.constant([0.0]), w)])
  np.testing.assert_allclose(seen, [0.01, 0.01, 1e-3, 1e-3, 1e-4], rtol=1e-12)
  assert float(opt.rate('b')) == 0.01  # Task b has made no update: its schedule has not moved.
  fixed = PerTaskSGD({'a': [w]}, 0.5, lr_policy='fixed', lr_stepsize=1)
  for _ in range(3):
    fixed.apply('a', [(tf.constant([0.0]), w)])
  assert float(fixed.rate('a')) == 0.5


def test_tasks_keep_separate_history_and_checkpoint_exactly(tmp_path):
  shared = tf.Variable([1.0, 1.0], name='trunk/kernel')
  head_a, head_b = tf.Variable([0.0], name='a/bias'), tf.Variable([0.0], name='b/bias')
  opt = PerTaskSGD({'a': [shared, head_a], 'b': [shared, head_b]}, 0.1, weight_decay=0.0)
  opt.apply('a', [(tf.constant([10.0, 10.0]), shared), (tf.constant([1.0]), head_a)])
  opt.apply('b', [(tf.constant([0.1, 0.1]), shared), (None, head_b)])
  # Exact: 0.1 x 10 and 0.1 x 0.1 (lr_mult 1), 0.1 x 2 x 1 (bias lr_mult 2), each one rounding at most.
  np.testing.assert_allclose(-opt.slot('a', shared).numpy(), [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(-opt.slot('b', shared).numpy(), [0.01, 0.01], rtol=1e-6)
  np.testing.assert_allclose(-opt.slot('a', head_a).numpy(), [0.2], rtol=1e-6)
  np.testing.assert_array_equal(opt.slot('b', head_b).numpy(), [0.0])  # None gradient: untouched.
  assert int(opt.iterations['a']) == 1 and int(opt.iterations['b']) == 1
  path = tf.train.Checkpoint(opt=opt, shared=shared).save(str(tmp_path / 'ckpt'))
  saved = [v.numpy() for v in opt.variables]
  assert len(saved) == 4 + 2  # Four (task, variable) histories and two counters.
  opt.apply('a', [(tf.constant([5.0, 5.0]), shared), (tf.constant([2.0]), head_a)])
  tf.train.Checkpoint(opt=opt, shared=shared).restore(path).assert_consumed()
  for got, want in zip(opt.variables, saved):
    np.testing.assert_array_equal(got.numpy(), want)


def test_apply_inside_switch_case_in_tf_function():
  shared = tf.Variable([1.0])
  opt = PerTaskSGD({'a': [shared], 'b': [shared]})

  @tf.function
  def step(task_id):
    branches = [lambda t=t: opt.apply(t, [(tf.constant([1.0]), shared)]) for t in ('a', 'b')]
    return tf.switch_case(task_id, branches)

  step(tf.constant(1))
  assert int(opt.iterations['b']) == 1 and int(opt.iterations['a']) == 0


def test_factory_picks_the_optimizer_from_the_config():
  variables = {'a': [tf.Variable([1.0])]}
  assert isinstance(optim.from_config(TrainConfig(), variables), PerTaskRMSProp)  # Doersch §4 by default.
  train = load_config(ExperimentConfig, [], ['train.optimizer=sgd', 'train.learning_rate=0.01']).train
  opt = optim.from_config(train, variables)
  assert isinstance(opt, PerTaskSGD)
  assert (opt.learning_rate, opt.momentum, opt.weight_decay, opt.lr_policy, opt.lr_gamma, opt.lr_stepsize,
          opt.bias_lr_mult, opt.bias_decay_mult) == (0.01, 0.9, 5e-4, 'step', 0.1, 100_000, 2.0, 0.0)  # fmt: skip


@pytest.mark.parametrize(
  'override_text, key',
  [
    ('train.optimizer=adam', 'train.optimizer'),
    ('train.sgd_momentum=1.0', 'train.sgd_momentum'),
    ('train.sgd_weight_decay=-1e-4', 'train.sgd_weight_decay'),
    ('train.sgd_lr_policy=poly', 'train.sgd_lr_policy'),
    ('train.sgd_lr_gamma=0.0', 'train.sgd_lr_gamma'),
    ('train.sgd_lr_stepsize=0', 'train.sgd_lr_stepsize'),
    ('train.sgd_bias_lr_mult=-2', 'train.sgd_bias_lr_mult'),
  ],
)
def test_bad_sgd_config_names_the_key(override_text, key):
  with pytest.raises(ConfigError, match=key.replace('.', r'\.')):
    load_config(ExperimentConfig, [], [override_text])


@pytest.mark.parametrize(
  'name, solver',
  [
    # JigsawPuzzleSolver solver_cfn_jps.prototxt (+ the prototxt's bias multipliers).
    ('jigsaw_alexnet', dict(learning_rate=0.01, sgd_momentum=0.9, sgd_weight_decay=5e-4, sgd_lr_policy='step',
                            sgd_lr_gamma=0.1, sgd_lr_stepsize=100_000, sgd_bias_lr_mult=2.0)),
    ('jigsaw_vgg16', dict(learning_rate=0.01, sgd_momentum=0.9, sgd_weight_decay=5e-4, sgd_lr_policy='step')),
    # deepcontext: fixed 1e-5 on a loss summed over pairs = 1e-5 x 2048 on our mean over 2048 pairs, no momentum.
    ('context_alexnet', dict(learning_rate=0.02048, sgd_momentum=0.0, sgd_weight_decay=0.0, sgd_lr_policy='fixed',
                             sgd_bias_lr_mult=1.0)),
    ('context_vgg16', dict(learning_rate=0.02048, sgd_momentum=0.0, sgd_weight_decay=0.0, sgd_lr_policy='fixed')),
  ],
)  # fmt: skip
def test_noroozi_paper_configs_use_the_authors_solver(name, solver):
  train = load_config(ExperimentConfig, [str(ROOT / 'configs' / 'pretext' / f'{name}.yaml')]).train
  assert train.optimizer == 'sgd'
  for key, value in solver.items():
    assert getattr(train, key) == (value if isinstance(value, str) else pytest.approx(value, rel=1e-12)), key


@pytest.mark.numerics
def test_tiny_jigsaw_alexnet_with_sgd_decreases_its_loss(tiny_world):
  cfg = load_config(ExperimentConfig, [str(ROOT / 'configs' / 'pretext' / 'jigsaw_alexnet_tiny.yaml')])
  cfg.tasks.jigsaw.data.source = tiny_world['sources']['images_train']
  cfg.train.optimizer = 'sgd'
  cfg.train.learning_rate = 0.01  # The authors' base_lr and momentum 0.9; no step within the run.
  tasks = build_tasks(cfg.tasks, cfg.trunk.output_stride, cfg.trunk)
  model = MultiTaskModel(cfg.trunk, tasks, cfg.lasso, 'float32')
  tf.keras.utils.set_random_seed(0)
  datasets = {'jigsaw': tasks['jigsaw'].dataset(ReadOptions(), cfg.tasks.jigsaw.data.source, seed=0)}
  trainer = LocalTrainer(model, datasets, cfg.train)
  assert isinstance(trainer.optimizer, PerTaskSGD)
  logs = trainer.run(120, log_every=30)['jigsaw']
  losses = logs.values['loss']
  # Chance loss is ln 4 = 1.386 (4 permutations). Windows of 30 steps of 8 puzzles: the mean loss of the last
  # window must sit clearly below the first's; the margin (0.1) is several times the spread of a 240-puzzle
  # window mean at chance (std of the per-puzzle loss ~0.3 / sqrt(240) ~ 0.02).
  assert losses[-1] < losses[0] - 0.1, losses
