"""NYU Depth v2 transfer evaluation (Doersch & Zisserman 2017 §5, after Laina et al. 2016).

`DepthProtocol` fine-tunes the trunk with FCRN's up-projection decoder (`depth_model`) on
NYU training images and reports the standard metrics on the test images.

Protocol (FCRN unless noted): frames are downsampled from 480 x 640 to 240 x 320 and
augmented as Eigen et al. 2014 (scale s in [1, 1.5] with depths divided by s, rotation
in [-5, 5] degrees, a random 228 x 304 crop, colour x [0.8, 1.2] per channel, horizontal
flip), trained with the berHu loss over valid pixels, with SGD + momentum 0.9 at 1e-2.

Evaluation: each test frame is downsampled the same way (240 x 320) and fed whole (the
network is fully convolutional); the prediction (stride 2: 120 x 160) is bilinearly
upsampled to the ground truth's full size (480 x 640) and scored on its valid pixels
inside Eigen's crop (rows 45:471, cols 41:601), with predictions clipped to
[min_depth, max_depth]. FCRN's released MATLAB evaluation instead stretches the
prediction of the central 228 x 304 crop over the full frame and scores every pixel;
`eval_crop: none` drops the crop (not the stretch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Tuple

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data import depth as nyu
from mtssl_tf.data.images import ReadOptions
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.depth_model import DepthMetrics, DepthModel, berhu_loss, valid_mask
from mtssl_tf.evaluation.protocol import Column, Context, FineTuneProtocol, Trainee
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.trunk.resnet_v2 import ResNetV2Trunk

NAME = 'depth'
OPTIMIZERS = ('momentum', 'adam')
SCHEDULES = ('constant', 'step', 'cosine')
EVAL_CROPS = ('eigen', 'none')


@dataclasses.dataclass
class DepthEvalConfig(backbone.LassoMixConfig):
  """The depth evaluation's settings. Sizes are (height, width).

  Attributes:
    train_source: NYU spec (`data.depth.depth_dataset`); '' = the caller passes it.
    test_source: the same for the test images.
    frame_size: frames are first resized to this (FCRN: 640 x 480 halved to 320 x 240).
    crop_size: training input, a random crop of the (scaled) frame (FCRN: 304 x 228).
    steps: training steps. FCRN trains ~20 epochs of its 12k images at batch 16, ~15k
      steps; Doersch do not give theirs.
    batch_size: FCRN: 16.
    eval_batch_size: test frames per batch (does not change the metrics).
    optimizer: 'momentum' (SGD with momentum, FCRN's) or 'adam'.
    momentum: FCRN: 0.9.
    learning_rate: FCRN: 1e-2 for all layers.
    schedule: 'step' (FCRN lowers the rate by hand every 6-8 of ~20 epochs, at plateaus),
      'cosine' or 'constant'.
    decay_fractions: 'step' boundaries as fractions of `steps` (7 and 14 of 20 epochs).
    decay_rate: 'step' factor per boundary (FCRN does not state it; 0.1 is an assumption).
    fine_tune_trunk: train the trunk too (FCRN and Doersch fine-tune every weight).
    use_lasso: decode a learned lasso mix of every block-3 unit (Doersch §3.2).
    lasso_l1_weight: L1 weight on the mix's alpha (the pre-training default).
    lasso_init: 'last' (starts as the plain trunk) or 'uniform'.
    lasso_mix_norm: 'trunk' (the mix goes through the trunk's own closing BN-ReLU, in
      block 3's place) or 'per_consumer' (a new BN-ReLU); see `LassoConfig.mix_norm`.
    projection_filters: 1x1 conv after the trunk (FCRN: 1024).
    upproject_filters: one up-projection per entry (Doersch: 512, 256, 128 at stride 16).
    flip: random horizontal flips (Eigen/FCRN: p = 0.5).
    scale_range: frame scale s, depths divided by s (Eigen/FCRN: [1, 1.5]).
    rotation_degrees: random rotation bound (Eigen/FCRN: 5); 0 disables.
    color_range: per-channel colour factor (Eigen/FCRN: [0.8, 1.2]).
    max_depth: ground truth beyond it does not count; predictions are clipped to it (NYU: 10 m).
    min_depth: predictions are clipped up to it before ratios and logs.
    eval_crop: 'eigen' (Eigen et al.'s crop) or 'none' (every valid pixel).
    shuffle_buffer: training frames shuffled (after downsampling, to bound memory).
    seed: shuffling and augmentation seed.
    log_every_steps: progress log interval.
    summary_every_steps: TensorBoard interval for the training loss.
    checkpoint_every_steps: checkpoint interval (also saved at the end).
  """

  train_source: str = ''
  test_source: str = ''
  frame_size: Tuple[int, ...] = (240, 320)
  crop_size: Tuple[int, ...] = (228, 304)
  steps: int = 15000
  batch_size: int = 16
  eval_batch_size: int = 8
  optimizer: str = 'momentum'
  momentum: float = 0.9
  learning_rate: float = 0.01
  schedule: str = 'step'
  decay_fractions: Tuple[float, ...] = (0.35, 0.7)
  decay_rate: float = 0.1
  fine_tune_trunk: bool = True
  projection_filters: int = 1024
  upproject_filters: Tuple[int, ...] = (512, 256, 128)
  flip: bool = True
  scale_range: Tuple[float, ...] = (1.0, 1.5)
  rotation_degrees: float = 5.0
  color_range: Tuple[float, ...] = (0.8, 1.2)
  max_depth: float = 10.0
  min_depth: float = 1e-3
  eval_crop: str = 'eigen'
  shuffle_buffer: int = 256
  seed: int = 0
  log_every_steps: int = 100
  summary_every_steps: int = 100
  checkpoint_every_steps: int = 1000

  def validate(self) -> None:
    def fail(key, message):
      raise ConfigError(f'depth.{key}: {message}')

    for key in ('frame_size', 'crop_size'):
      size = tuple(getattr(self, key))
      if len(size) != 2 or min(size) < 1:
        fail(key, f'need (height, width), both positive, got {list(size)}')
    if any(c > f for c, f in zip(self.crop_size, self.frame_size)):
      fail('crop_size', f'{list(self.crop_size)} does not fit in frame_size {list(self.frame_size)}')
    for key in ('batch_size', 'eval_batch_size', 'projection_filters', 'shuffle_buffer'):
      if getattr(self, key) < 1:
        fail(key, f'must be positive, got {getattr(self, key)}')
    for key in ('log_every_steps', 'summary_every_steps', 'checkpoint_every_steps'):
      if getattr(self, key) < 1:
        fail(key, f'must be positive, got {getattr(self, key)}')
    if self.steps < 0:
      fail('steps', f'must be >= 0, got {self.steps}')
    if self.optimizer not in OPTIMIZERS:
      fail('optimizer', f'must be one of {OPTIMIZERS}, got {self.optimizer!r}')
    if not 0.0 <= self.momentum < 1.0:
      fail('momentum', f'must be in [0, 1), got {self.momentum}')
    if self.learning_rate <= 0:
      fail('learning_rate', f'must be positive, got {self.learning_rate}')
    if self.schedule not in SCHEDULES:
      fail('schedule', f'must be one of {SCHEDULES}, got {self.schedule!r}')
    fractions = list(self.decay_fractions)
    if any(not 0 < f < 1 for f in fractions) or fractions != sorted(set(fractions)):
      fail('decay_fractions', f'need increasing fractions in (0, 1), got {fractions}')
    if not 0 < self.decay_rate <= 1:
      fail('decay_rate', f'must be in (0, 1], got {self.decay_rate}')
    backbone.check_lasso_fields(self, NAME)
    if not self.upproject_filters or min(self.upproject_filters) < 1:
      fail('upproject_filters', f'need one or more positive filter counts, got {list(self.upproject_filters)}')
    low, high = _pair(self.scale_range, 'scale_range')
    if not 1.0 <= low <= high:
      fail('scale_range', f'need 1 <= low <= high (a crop must fit the scaled frame), got {[low, high]}')
    low, high = _pair(self.color_range, 'color_range')
    if not 0 < low <= high:
      fail('color_range', f'need 0 < low <= high, got {[low, high]}')
    if not 0 <= self.rotation_degrees < 90:
      fail('rotation_degrees', f'must be in [0, 90), got {self.rotation_degrees}')
    if not 0 < self.min_depth < self.max_depth:
      fail('max_depth', f'need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}')
    if self.eval_crop not in EVAL_CROPS:
      fail('eval_crop', f'must be one of {EVAL_CROPS}, got {self.eval_crop!r}')


def _pair(values, key: str) -> Tuple[float, float]:
  if len(values) != 2:
    raise ConfigError(f'depth.{key}: need [low, high], got {list(values)}')
  return float(values[0]), float(values[1])


def _frame(image: tf.Tensor, depth: tf.Tensor, size) -> Tuple[tf.Tensor, tf.Tensor]:
  """Image (float, antialiased) and depth (nearest: holes stay 0, never averaged) at `size`."""
  image = tf.image.resize(tf.cast(image, tf.float32), size, method='bilinear', antialias=True)
  depth = tf.image.resize(depth[..., None], size, method='nearest')[..., 0]
  return image, depth


def _to_uint8(image: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _rotate(image: tf.Tensor, angle: tf.Tensor, interpolation: str) -> tf.Tensor:
  """Rotates [H, W, C] about its centre; pixels from outside are 0 (invalid depth)."""
  height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
  cos, sin = tf.cos(angle), tf.sin(angle)
  cx, cy = (width - 1) / 2, (height - 1) / 2
  # Output (x, y) reads input (cos (x-cx) - sin (y-cy) + cx, sin (x-cx) + cos (y-cy) + cy).
  transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
  return tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform[None],
    output_shape=tf.shape(image)[:2],
    fill_value=0.0,
    interpolation=interpolation,
    fill_mode='CONSTANT',
  )[0]


def augment(image: tf.Tensor, depth: tf.Tensor, seed: tf.Tensor, cfg: DepthEvalConfig) -> Dict[str, tf.Tensor]:
  """One training example from a frame (Eigen et al.'s scale, rotation, crop, colour, flip).

  Args:
    image: float [H, W, 3] in [0, 255], at `cfg.frame_size`.
    depth: float [H, W] metres, 0 where invalid.
    seed: int [2], the stateless seed of this example.
    cfg: the evaluation config.

  Returns:
    {'image': uint8 [*crop_size, 3], 'depth': float32 [*crop_size] (0 where invalid)}.
  """
  seeds = tf.random.experimental.stateless_split(seed, 5)
  low, high = cfg.scale_range
  if high > 1.0:
    scale = tf.random.stateless_uniform([], seeds[0], low, high)
    size = tf.cast(tf.math.ceil(tf.cast(tf.shape(depth), tf.float32) * scale), tf.int32)
    image = tf.image.resize(image, size, method='bilinear')
    # Scaling up is moving the camera closer by s, so depths shrink by s (Eigen et al.).
    depth = tf.image.resize(depth[..., None], size, method='nearest')[..., 0] / scale
  if cfg.rotation_degrees > 0:
    limit = cfg.rotation_degrees * math.pi / 180
    angle = tf.random.stateless_uniform([], seeds[1], -limit, limit)
    image = _rotate(image, angle, 'BILINEAR')
    depth = _rotate(depth[..., None], angle, 'NEAREST')[..., 0]
  both = tf.concat([image, depth[..., None]], axis=-1)
  both = tf.image.stateless_random_crop(both, [cfg.crop_size[0], cfg.crop_size[1], 4], seeds[2])
  if cfg.flip:
    both = tf.image.stateless_random_flip_left_right(both, seeds[3])
  color = tf.random.stateless_uniform([3], seeds[4], cfg.color_range[0], cfg.color_range[1])
  return {'image': _to_uint8(both[..., :3] * color), 'depth': both[..., 3]}


def training_dataset(
  spec: str, cfg: DepthEvalConfig, preprocess: Callable[[tf.Tensor], tf.Tensor], start_step: int = 0
) -> tf.data.Dataset:
  """Batched, augmented, repeated training data: {'image' (trunk input), 'depth', 'mask'}.

  `start_step` offsets the shuffle and augmentation seeds, so a resumed run does not
  replay the first run's batches.
  """
  seed = cfg.seed + start_step
  options = ReadOptions(shuffle_files=True, seed=seed, deterministic=False)
  ds = nyu.depth_dataset(spec, options)
  ds = ds.map(lambda e: _frame(e['image'], e['depth'], cfg.frame_size), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.shuffle(cfg.shuffle_buffer, seed=seed).repeat()
  ds = ds.enumerate(start=start_step * cfg.batch_size)
  ds = ds.map(
    lambda i, e: augment(e[0], e[1], tf.stack([tf.cast(cfg.seed, tf.int64), i]), cfg),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  ds = ds.batch(cfg.batch_size, drop_remainder=True)
  ds = ds.map(
    lambda b: {
      'image': preprocess(b['image']),
      'depth': b['depth'],
      'mask': valid_mask(b['depth'], max_depth=cfg.max_depth),
    },
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(spec: str, cfg: DepthEvalConfig) -> tf.data.Dataset:
  """Test frames at `frame_size` (uint8) with full-size 'depth', 'valid', 'num_skipped'."""
  ds = nyu.depth_dataset(spec, ReadOptions())

  def prepare(e):
    image, _ = _frame(e['image'], e['depth'], cfg.frame_size)
    return {'image': _to_uint8(image), 'depth': e['depth'], 'valid': e['valid'], 'num_skipped': e['num_skipped']}

  # Batches need one ground-truth size, as NYU's (480 x 640) is.
  return ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(cfg.eval_batch_size).prefetch(tf.data.AUTOTUNE)


def learning_rate_schedule(cfg: DepthEvalConfig):
  """The configured schedule (a float for 'constant')."""
  if cfg.schedule == 'constant' or cfg.steps == 0:
    return cfg.learning_rate
  if cfg.schedule == 'cosine':
    return tf.keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.steps)
  boundaries = sorted({max(1, int(f * cfg.steps)) for f in cfg.decay_fractions})
  values = [cfg.learning_rate * cfg.decay_rate**k for k in range(len(boundaries) + 1)]
  return tf.keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def make_optimizer(cfg: DepthEvalConfig, rate=None) -> tf.keras.optimizers.Optimizer:
  """SGD with momentum (FCRN) or Adam, on `rate` (default `learning_rate_schedule(cfg)`)."""
  rate = learning_rate_schedule(cfg) if rate is None else rate
  if cfg.optimizer == 'adam':
    return tf.keras.optimizers.Adam(rate)
  return tf.keras.optimizers.SGD(rate, momentum=cfg.momentum)


def build_model(cfg: DepthEvalConfig, trunk: ResNetV2Trunk) -> DepthModel:
  """The depth model around `trunk`, its variables created."""
  model = DepthModel(
    trunk,
    projection_filters=cfg.projection_filters,
    upproject_filters=tuple(cfg.upproject_filters),
    fine_tune_trunk=cfg.fine_tune_trunk,
    use_lasso=cfg.use_lasso,
    lasso_l1_weight=cfg.lasso_l1_weight,
    lasso_init=cfg.lasso_init,
    lasso_mix_norm=cfg.lasso_mix_norm,
  )
  model(tf.zeros([1, cfg.crop_size[0], cfg.crop_size[1], 3]), training=False)
  return model


def make_train_step(model: DepthModel, optimizer: tf.keras.optimizers.Optimizer, cfg: DepthEvalConfig):
  """batch -> (loss + penalty, {'loss': reverse Huber loss}), one update (a tf.function)."""
  variables = model.trainable_variables
  crop = tuple(cfg.crop_size)

  @tf.function
  def step_fn(batch):
    with tf.GradientTape() as tape:
      loss = berhu_loss(model.predict_at(batch['image'], crop, training=True), batch['depth'], batch['mask'])
      total = loss + model.penalty()
    grads = tape.gradient(total, variables)
    optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
    return total, {'loss': loss}

  return step_fn


def evaluate(model: DepthModel, dataset: tf.data.Dataset, cfg: DepthEvalConfig) -> Dict[str, Any]:
  """Metrics over an `eval_dataset`, accumulated exactly (sums and pixel counts).

  Returns:
    The metrics plus 'num_images', 'num_pixels' and 'num_skipped' (unreadable records).
  """

  @tf.function(reduce_retracing=True)
  def predict(images, size):
    return model.predict_at(images, size, training=False)

  metrics = DepthMetrics(cfg.min_depth, cfg.max_depth)
  crops: Dict[Tuple[int, int], tf.Tensor] = {}
  num_images = num_skipped = 0
  for batch in dataset:
    size = tuple(batch['depth'].shape[1:3])
    if size not in crops:
      crops[size] = nyu.eigen_crop_mask(*size) if cfg.eval_crop == 'eigen' else tf.ones(size, tf.bool)
    mask = valid_mask(batch['depth'], batch['valid'], cfg.max_depth) & crops[size][None]
    metrics.update(predict(batch['image'], tf.constant(size)), batch['depth'], mask)
    num_images += int(batch['depth'].shape[0])
    num_skipped = max(num_skipped, int(tf.reduce_max(batch['num_skipped'])))
  if not num_images:
    raise ValueError('depth: the test source holds no images')
  return dict(metrics.result(), num_images=num_images, num_pixels=metrics.pixels, num_skipped=num_skipped)


# The decoder reads block 3 at the trunk's configured output stride (the up-projections
# undo it) and lasso mixes block-3 units: ResNet-v2's structure. AlexNet / VGG16 are refused.
TRUNK_KINDS = ('resnet_v2',)
TRUNK_NEEDS = 'the up-projection decoder reads block 3 at a chosen output stride, lasso its block-3 units'
METRICS = ('delta1', 'delta2', 'delta3', 'abs_rel', 'rms', 'log10')


class DepthProtocol(FineTuneProtocol):
  """Doersch & Zisserman §5: NYU depth with up-projection (Laina et al.), fine-tuning the trunk.

  Everything goes to `<model_dir>/eval/depth`: TensorBoard events (`depth/loss`,
  `depth/learning_rate`, `depth/steps_per_second`, and every test metric as
  `depth/<metric>` at the last step), `checkpoints/` (resumed from, if present) and
  `results.json`: delta1-3, abs_rel, rms, log10, image and pixel counts and the protocol.
  """

  name = NAME
  summary = 'NYU depth with up-projection, trunk fine-tuned (% of pixels with delta < 1.25)'
  config_class = DepthEvalConfig
  world_sources = ('depth_train', 'depth_test')
  headline = METRICS
  columns = (
    Column('NYU delta<1.25 (%)', 'delta1', 100.0, 2),
    Column('NYU abs rel', 'abs_rel', 1.0),
    Column('NYU rms (m)', 'rms', 1.0),
  )
  max_to_keep = 1

  def prepare(self, ctx: Context) -> Context:
    ctx.section.validate()
    backbone.check_trunk_kind(NAME, ctx.trunk_kind(), TRUNK_KINDS, TRUNK_NEEDS)  # Before loading anything.
    return ctx

  def build(self, ctx: Context) -> Trainee:
    self.model = build_model(ctx.section, ctx.trunk())
    return Trainee({'model': self.model}, self.model.trainable_variables)

  def loop(self, cfg: DepthEvalConfig) -> Dict[str, int]:
    return dict(super().loop(cfg), summary_every_steps=cfg.summary_every_steps)

  def schedule(self, ctx: Context):
    return learning_rate_schedule(ctx.section)

  def optimizer(self, ctx: Context, schedule) -> tf.keras.optimizers.Optimizer:
    return make_optimizer(ctx.section, schedule)

  def train_step(self, ctx: Context, trainee: Trainee, optimizer: tf.keras.optimizers.Optimizer):
    return make_train_step(self.model, optimizer, ctx.section)

  def train_data(self, ctx: Context, start: int) -> tf.data.Dataset:
    return training_dataset(ctx.train_spec, ctx.section, ctx.input_fn(), start_step=start)

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: DepthEvalConfig = ctx.section
    preprocess = ctx.input_fn()
    test = eval_dataset(ctx.test_spec, cfg).map(lambda b: dict(b, image=preprocess(b['image'])))
    results = evaluate(self.model, test, cfg)
    tune.scalars({key: results[key] for key in METRICS})
    results.update(
      steps=tune.step,
      eval_crop=cfg.eval_crop,
      eval_crop_bounds=list(nyu.EIGEN_CROP) if cfg.eval_crop == 'eigen' else None,
      eval_resolution='ground truth (prediction bilinearly upsampled)',
      min_depth=cfg.min_depth,
      max_depth=cfg.max_depth,
      frame_size=list(cfg.frame_size),
      crop_size=list(cfg.crop_size),
      fine_tune_trunk=cfg.fine_tune_trunk,
      use_lasso=cfg.use_lasso,
      **ctx.inputs(),
    )
    if self.model.lasso is not None:
      results['lasso_alpha'] = backbone.lasso_alpha(self.model.lasso)
    return results


def run_depth(
  cfg: DepthEvalConfig,
  trunk: ResNetV2Trunk,
  model_dir: str,
  train_spec: Optional[str] = None,
  test_spec: Optional[str] = None,
  preprocessing: str = 'rgb',
  progress: bool = True,
  init_source: str = '',
) -> Dict[str, Any]:
  """`DepthProtocol` on a built trunk (fine-tuned in place unless frozen), outside `mtssl-eval`.

  Sources default to the section's; `init_source` is recorded in the results.

  Raises:
    ConfigError: invalid config, no train/test source, or a trunk that is not ResNet-v2.
    FloatingPointError: the training loss became NaN or infinite (the step is named).
  """
  ctx = DepthProtocol.direct_context(cfg, model_dir, train_spec or '', test_spec or '', network=trunk,
                                     preprocessing=preprocessing, init=init_source, progress=progress)  # fmt: skip
  return DepthProtocol().run(ctx)
