"""Frozen linear classification (Doersch & Zisserman 2017, §5) and per-layer linear probes.

Protocol. The trunk is frozen: it runs in inference mode (BatchNorm uses its moving
statistics, which never change) outside the gradient tape, so no gradient reaches it.
A single linear softmax layer is trained on the block-3 output (`final`) max-pooled to
3x3 (Doersch: 3x3x1024 for ResNet-101). Pooling is adaptive max pooling: the map is
cut into a `g x g` grid of cells whose bounds are floor(i * H / g) .. ceil((i + 1) * H / g),
as PyTorch's AdaptiveMaxPool2d does, so any input size gives the same dimension.

Noroozi et al. 2018 (Table 4, after Zhang et al. 2016) probe every layer, each
"spatially resized until under 9K dimensions". We read 9K as 9 x 1024 = 9216 and take
the largest square grid g with g * g * C <= 9216, never larger than the map itself
(`probe_grid`): for 1024 channels that is 3x3, agreeing with Doersch's protocol (a
strict 9,000 would give 2x2); 256 channels give 6x6 (Zhang's conv5 is 6x6x256 = 9216).
All probes train in the same pass off one frozen forward pass, each with its own
linear layer and loss; with `use_lasso` the main layer reads a freshly learned lasso
mix of all block-3 units (Doersch §5 learns a new alpha for each evaluation).

`feature_norm` puts a BatchNorm without scale or offset before each linear layer
(standard practice for linear probes, e.g. MAE's): at test time it is a fixed
per-dimension affine map, so the classifier stays linear, and one learning rate
suits endpoints of very different scales (block-3 units are not normalised).

Training sees a random `crop_size` crop of the image resized to shorter side
`image_size` (random translation) and brightness/contrast/saturation/hue jitter; test
uses one centre crop. Metrics are recall@1 and recall@5 (top-1/top-5 accuracy) over
the whole validation set. The data and metric helpers here are shared with
`supervised.py`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.evaluation import backbone
from mtssl_tf.evaluation.classification import (
  TOP_K,
  ClassifierProtocol,
  ClassifierTrainingConfig,
  ColorJitter,
  check_training_fields,
  correct_at_k,
)
from mtssl_tf.evaluation.protocol import Column, Context, Trainee
from mtssl_tf.train.finetune import FineTune
from mtssl_tf.trunk import lasso as lasso_lib
from mtssl_tf.trunk.lasso import LassoMix

NAME = 'linear'
# Any trunk kind's endpoints (`backbone.ENDPOINT_NAMES`); the loaded trunk must have the one named.
ENDPOINTS = backbone.ENDPOINT_NAMES
_UNIT_ENDPOINT = re.compile(r'^block3/unit_\d{2}$')
MAX_PROBE_DIMS = 9216
MAIN = 'main'


def _is_endpoint_name(name: str) -> bool:
  return name in ENDPOINTS or bool(_UNIT_ENDPOINT.match(name))


@dataclasses.dataclass
class LinearEvalConfig(ClassifierTrainingConfig, backbone.LassoMixConfig):
  """Frozen linear classification.

  The shared data, SGD and loop fields come from `ClassifierTrainingConfig`, the lasso
  fields from `backbone.LassoMixConfig`.

  Attributes:
    endpoint: trunk endpoint of the main classifier ('final' = block-3 output after
      BN-ReLU, Doersch §5; an AlexNet / VGG16 trunk's 'final' is its `final_endpoint`,
      pool5 by default, and its conv endpoints can be named).
    pool_size: the main endpoint is max-pooled to pool_size x pool_size (Doersch: 3).
    probe_endpoints: further endpoints, each with its own linear layer on a grid
      chosen by `probe_grid` (Noroozi et al. 2018, Table 4).
    probe_max_dims: the probes' dimension budget (9216, see the module docstring).
    feature_norm: non-affine BatchNorm on the pooled features (module docstring).
    use_lasso, lasso_l1_weight, lasso_init, lasso_mix_norm: the main layer reads a fresh
      lasso mix of all block-3 units (`backbone.LassoMixConfig`).
    brightness: maximum brightness delta on [0, 1] images (TF-slim Inception: 32/255).
    contrast_range: (min, max) contrast factor (TF-slim Inception: 0.5-1.5).
    saturation_range: (min, max) saturation factor (TF-slim Inception: 0.5-1.5).
    max_hue: maximum hue delta (TF-slim Inception: 0.2).
    steps: ~28 ImageNet epochs at batch 256, as Goyal et al. 2019 (learning rate 0.01,
      weight decay 5e-4 on the linear kernels: the shared defaults).
    lr_decay_steps: staircase decay interval (about 10 ImageNet epochs).
  """

  endpoint: str = 'final'
  pool_size: int = 3
  probe_endpoints: Tuple[str, ...] = ()
  probe_max_dims: int = MAX_PROBE_DIMS
  feature_norm: bool = True
  brightness: float = 32.0 / 255.0
  contrast_range: Tuple[float, ...] = (0.5, 1.5)
  saturation_range: Tuple[float, ...] = (0.5, 1.5)
  max_hue: float = 0.2
  steps: int = 140_000
  lr_decay_steps: int = 50_000

  def validate(self) -> None:
    if not _is_endpoint_name(self.endpoint):
      raise ConfigError(f'linear.endpoint: unknown endpoint {self.endpoint!r} (one of {ENDPOINTS} or block3/unit_NN)')
    bad = [e for e in self.probe_endpoints if not _is_endpoint_name(e)]
    if bad or len(set(self.probe_endpoints)) != len(self.probe_endpoints):
      raise ConfigError(
        f'linear.probe_endpoints: need distinct endpoints from {ENDPOINTS} or block3/unit_NN, '
        f'got {list(self.probe_endpoints)}'
      )
    if self.use_lasso and self.endpoint not in ('final', 'block3'):
      raise ConfigError(f'linear.use_lasso: the lasso mix replaces the block-3 output, but endpoint={self.endpoint!r}')
    backbone.check_lasso_fields(self, 'linear')
    check_training_fields(self, 'linear')
    for key in ('pool_size', 'probe_max_dims', 'lr_decay_steps'):
      if getattr(self, key) < 1:
        raise ConfigError(f'linear.{key}: must be positive, got {getattr(self, key)}')
    for key in ('contrast_range', 'saturation_range'):
      value = tuple(getattr(self, key))
      if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ConfigError(f'linear.{key}: need (min, max) with 0 < min <= max, got {list(value)}')
    if self.brightness < 0:
      raise ConfigError(f'linear.brightness: must be >= 0, got {self.brightness}')
    if not 0 <= self.max_hue <= 0.5:
      raise ConfigError(f'linear.max_hue: must be in [0, 0.5], got {self.max_hue}')


def _pool_axis(x: tf.Tensor, axis: int, cells: int) -> tf.Tensor:
  size = x.shape[axis] if x.shape[axis] is not None else tf.shape(x)[axis]
  out = []
  for i in range(cells):
    start = (i * size) // cells
    end = -((-(i + 1) * size) // cells)  # ceil((i + 1) * size / cells)
    part = x[:, start:end] if axis == 1 else x[:, :, start:end]
    out.append(tf.reduce_max(part, axis=axis, keepdims=True))
  return tf.concat(out, axis=axis)


def adaptive_max_pool(x: tf.Tensor, grid: Tuple[int, int]) -> tf.Tensor:
  """Max-pools [B, H, W, C] to [B, gh, gw, C] for any H, W (static or dynamic).

  Cell (i, j) is the max over rows floor(i H / gh) .. ceil((i + 1) H / gh) - 1 and the
  same for columns: cells tile the map, overlapping by a row when gh does not divide
  H, and repeat rows when the map is smaller than the grid. Rows then columns: the max
  of a rectangle is separable.
  """
  return _pool_axis(_pool_axis(x, 1, grid[0]), 2, grid[1])


def probe_grid(channels: int, max_dims: int = MAX_PROBE_DIMS, spatial: Optional[int] = None) -> int:
  """Largest g with g * g * channels <= max_dims, at most `spatial`, at least 1 (global max pooling)."""
  g = max(1, math.isqrt(max_dims // channels))
  return min(g, spatial) if spatial else g


class LinearHead(tf.keras.layers.Layer):
  """Adaptive max pooling to grid x grid, optional non-affine BatchNorm, one linear softmax layer."""

  def __init__(self, num_classes: int, grid: int, feature_norm: bool = True, **kwargs):
    super().__init__(dtype='float32', **kwargs)
    self.grid = grid
    self.norm = None
    if feature_norm:
      self.norm = tf.keras.layers.BatchNormalization(center=False, scale=False, name='norm', dtype='float32')
    # Zeros: the problem is convex, so no symmetry to break, and runs are reproducible.
    self.dense = tf.keras.layers.Dense(num_classes, kernel_initializer='zeros', name='logits', dtype='float32')

  def call(self, features: tf.Tensor, training=None) -> tf.Tensor:
    x = adaptive_max_pool(tf.cast(features, tf.float32), (self.grid, self.grid))
    x = tf.reshape(x, [-1, self.grid * self.grid * int(x.shape[-1])])
    if self.norm is not None:
      x = self.norm(x, training=training)
    return self.dense(x)


def _key(endpoint: str) -> str:
  return endpoint.replace('/', '_')


class LinearProbes(tf.keras.Model):
  """The main linear classifier (optionally on a lasso mix) and one per probed endpoint."""

  def __init__(
    self,
    sources: Dict[str, str],
    grids: Dict[str, int],
    num_classes: int,
    feature_norm: bool = True,
    lasso_units: int = 0,
    lasso_l1_weight: float = 1e-3,
    lasso_init: str = 'last',
    lasso_mix_norm: str = 'trunk',
    final_norm: Optional[Callable[[tf.Tensor], tf.Tensor]] = None,
  ):
    """Creates the layers.

    Args:
      sources: classifier key -> endpoint it reads (the main key may read the lasso mix).
      grids: classifier key -> pooling grid.
      num_classes: classes.
      feature_norm: see `LinearEvalConfig`.
      lasso_units: block-3 units; > 0 makes the main classifier read a lasso mix of them.
      lasso_l1_weight: L1 weight on alpha.
      lasso_init: alpha's initialisation.
      lasso_mix_norm: 'trunk' (the mix goes through `final_norm`) or 'per_consumer' (a new BN-ReLU).
      final_norm: the frozen trunk's closing BN-ReLU for a 'trunk' mix (None: the bare mix).
    """
    # float32 whatever the global policy: a mixed-precision trunk feeds float32 classifiers.
    super().__init__(name='linear_probes', dtype='float32')
    self.sources = dict(sources)
    self.heads = {k: LinearHead(num_classes, grids[k], feature_norm, name=f'head_{k}') for k in sources}
    self.lasso = None
    self.lasso_norm = None
    # A plain function, not tracked: the trunk's variables stay out of the probes' own.
    self._final_norm = final_norm or (lambda x: x)
    if lasso_units:
      self.lasso = LassoMix(1, lasso_units, lasso_l1_weight, lasso_init, name='lasso')
      self.lasso_norm = lasso_lib.consumer_norm(lasso_mix_norm, 'lasso_bn', 'float32')

  def call(self, endpoints: Dict[str, tf.Tensor], units: Sequence[tf.Tensor] = (), training=None):
    """Endpoints (and block-3 units for lasso) -> ({key: logits}, lasso penalty)."""
    logits, penalty = {}, tf.constant(0.0)
    for key, head in self.heads.items():
      if key == MAIN and self.lasso is not None:
        mixed = self.lasso([tf.cast(u, tf.float32) for u in units], consumer=0)
        if self.lasso_norm is not None:
          features = tf.nn.relu(self.lasso_norm(mixed, training=training))
        else:  # In block 3's place (trunk/lasso.py): then the trunk's closing BN-ReLU if the endpoint has it.
          features = tf.cast(self._final_norm(mixed), tf.float32)
        penalty = self.lasso.penalty(0)
      else:
        features = endpoints[self.sources[key]]
      logits[key] = head(features, training=training)
    return logits, penalty


def make_probe_step(
  probes: LinearProbes,
  frozen: Callable[[tf.Tensor], Tuple[Dict[str, tf.Tensor], Sequence[tf.Tensor]]],
  optimizer: tf.keras.optimizers.Optimizer,
  num_classes: int,
  weight_decay: float,
) -> Callable:
  """The training step of linear probes on frozen features, shared by `linear` and the student probes.

  Each head gets a softmax cross-entropy; the total adds L2 weight decay on the heads'
  kernels and the lasso penalty. Metrics: `<endpoint>/loss` and `<endpoint>/train_top1`
  per probed endpoint, and `loss` / `train_top1` of the main head (or, without one, the
  means over the probes).

  Args:
    probes: the heads.
    frozen: uint8 images -> (endpoints, block-3 units), outside any gradient path.
    optimizer: updates the heads.
    num_classes: classes; a larger training label is an error.
    weight_decay: L2 weight on the heads' kernels.
  """

  @tf.function
  def train_step(batch):
    labels = batch['label']
    tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message='training label >= num_classes')
    endpoints, units = frozen(batch['image'])
    with tf.GradientTape() as tape:
      all_logits, penalty = probes(endpoints, units, training=True)
      losses, hits, metrics = [], [], {}
      for key, logits in all_logits.items():
        losses.append(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)))
        hits.append(tf.reduce_mean(tf.cast(correct_at_k(logits, labels, 1), tf.float32)))
        tag = '' if key == MAIN else probes.sources[key] + '/'
        metrics[f'{tag}loss'], metrics[f'{tag}train_top1'] = losses[-1], hits[-1]
      decay = tf.add_n([tf.nn.l2_loss(h.dense.kernel) for h in probes.heads.values()])
      total = tf.add_n(losses) + weight_decay * decay + penalty
    variables = probes.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(total, variables), variables))
    if MAIN not in all_logits:
      metrics['loss'], metrics['train_top1'] = tf.add_n(losses) / len(losses), tf.add_n(hits) / len(hits)
    return total, metrics

  return train_step


def _head_layout(cfg: LinearEvalConfig, trunk: tf.keras.Model) -> Tuple[Dict[str, str], Dict[str, int], Dict[str, int]]:
  """Classifier key -> endpoint, grid and feature dimension, from one forward pass at crop size."""
  shapes = {k: v.shape for k, v in trunk(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3]), training=False).items()}
  for key, names in (('endpoint', [cfg.endpoint]), ('probe_endpoints', list(cfg.probe_endpoints))):
    missing = [n for n in names if n not in shapes]
    if missing:
      raise ConfigError(f'linear.{key}: the trunk has no endpoint {missing} (it has {sorted(shapes)})')
  if cfg.use_lasso:
    backbone.check_trunk_kind('linear.use_lasso', trunk.kind, ('resnet_v2',), 'a lasso mix of its block-3 units')
  if cfg.use_lasso and trunk.config.output_stride == 32:
    raise ConfigError('linear.use_lasso: needs every block-3 unit at one resolution; the trunk has output stride 32')
  sources, grids, dims = {MAIN: cfg.endpoint}, {MAIN: cfg.pool_size}, {}
  for endpoint in cfg.probe_endpoints:
    _, height, width, channels = shapes[endpoint]
    sources[_key(endpoint)] = endpoint
    grids[_key(endpoint)] = probe_grid(channels, cfg.probe_max_dims, min(height, width))
  for key, grid in grids.items():
    dims[key] = grid * grid * int(shapes[sources[key]][-1])
  return sources, grids, dims


# ----------------------------------------------------------------------------- the protocols


class ProbesProtocol(ClassifierProtocol):
  """Linear classifiers on a frozen network's endpoints, all trained in one pass off one forward pass.

  `linear` and the transfer student's probes (Noroozi Table 4) share it: a subclass says
  which heads read which endpoints (`layout`), builds the heads (`make_probes`) and the
  frozen forward pass (`frozen_features`), and writes its results from `probe_scores`.
  """

  def build(self, ctx: Context) -> Trainee:
    cfg = ctx.section
    self.count_classes(ctx)
    self.sources, self.grids, self.dims = self.layout(ctx)
    self.probes = self.make_probes(ctx)
    frozen = self.frozen = self.frozen_features(ctx)

    def forward(images, training):
      return self.probes(*frozen(images), training=training)

    # Variables (heads, optimizer slots) exist before any restore or traced step.
    forward(tf.zeros([1, cfg.crop_size, cfg.crop_size, 3], tf.uint8), False)
    self.predict = tf.function(lambda images: forward(images, False)[0], reduce_retracing=True)
    return Trainee({'probes': self.probes}, self.probes.trainable_variables, self.window_summaries())

  def train_step(self, ctx: Context, trainee: Trainee, optimizer: tf.keras.optimizers.Optimizer) -> Callable:
    return make_probe_step(self.probes, self.frozen, optimizer, self.num_classes, ctx.section.weight_decay)

  @abc.abstractmethod
  def layout(self, ctx: Context) -> Tuple[Dict[str, str], Dict[str, int], Dict[str, int]]:
    """Head key -> the endpoint it reads, its pooling grid and its feature dimension."""

  def make_probes(self, ctx: Context) -> LinearProbes:
    """The heads (`LinearProbes` on `sources` and `grids`)."""
    return LinearProbes(self.sources, self.grids, self.num_classes, ctx.section.feature_norm)

  @abc.abstractmethod
  def frozen_features(self, ctx: Context) -> Callable:
    """uint8 images -> (endpoints, block-3 units) of the frozen network, outside any gradient path."""

  def window_summaries(self) -> Optional[Callable[[], Dict[str, float]]]:
    """More scalars per logging window (none by default)."""
    return None

  def probe_scores(self, ctx: Context, tune: FineTune, stats: Dict[str, Any], main: str = '') -> Tuple[Dict, Dict]:
    """(scores per head key, counts) of the validation set; summaries `<endpoint>/top1`, bare for head `main`."""
    tags = {k: '' if k == main else source for k, source in self.sources.items()}
    return self.test_heads(ctx, tune, stats, self.predict, tags)

  def probe_results(self, scores: Dict, main: str = '') -> Dict[str, Dict[str, Any]]:
    """{endpoint: {top1, top5, grid, dims}} of every head but `main`."""
    return {self.sources[k]: dict(scores[k], grid=self.grids[k], dims=self.dims[k]) for k in self.sources if k != main}

  def grid_rule(self, max_dims: int) -> str:
    return f'largest square grid g with g*g*channels <= {max_dims}, not above the map size'


class LinearProtocol(ProbesProtocol):
  """Doersch & Zisserman §5: frozen trunk, linear classifiers on pooled endpoints (ImageNet).

  Summaries, the probe checkpoints (resumed from their last step) and results.json go
  to `<model_dir>/eval/linear`; the trunk is never modified. Results: top1/top5 of the
  main classifier, `probes` {endpoint: {top1, top5, grid, dims}}, `protocol`, `counts`.
  """

  name = NAME
  summary = 'frozen trunk, linear classifiers on pooled endpoints (ImageNet top-1/top-5)'
  config_class = LinearEvalConfig
  source_fields = ('train_source', 'validation_source')
  world_sources = ('images_train', 'images_validation')
  headline = ('top1', 'top5')
  columns = (Column('ImageNet top-5 (%)', 'top5', 100.0, 0), Column('ImageNet top-1 (%)', 'top1', 100.0))

  def augmentation(self, cfg: LinearEvalConfig):
    return ColorJitter(cfg.brightness, tuple(cfg.contrast_range), tuple(cfg.saturation_range), cfg.max_hue), False

  def layout(self, ctx: Context):
    return _head_layout(ctx.section, ctx.trunk())

  def make_probes(self, ctx: Context) -> LinearProbes:
    cfg: LinearEvalConfig = ctx.section
    trunk = ctx.trunk()
    self.lasso_units = trunk.num_units if cfg.use_lasso else 0
    final_norm = None
    if cfg.endpoint == 'final':  # The frozen trunk's closing BN-ReLU, in inference mode as the trunk runs.
      final_norm = lambda x: lasso_lib.final_activation(trunk, x, training=False)  # noqa: E731
    return LinearProbes(self.sources, self.grids, self.num_classes, cfg.feature_norm, self.lasso_units,
                        cfg.lasso_l1_weight, cfg.lasso_init, cfg.lasso_mix_norm, final_norm)  # fmt: skip

  def frozen_features(self, ctx: Context) -> Callable:
    trunk, to_input, lasso_units = ctx.trunk(), ctx.input_fn(), self.lasso_units

    def frozen(images):
      # training=False: BatchNorm uses (and never updates) its moving statistics. Run
      # outside any gradient tape and cut by stop_gradient, so nothing flows back.
      endpoints = {k: tf.stop_gradient(v) for k, v in trunk(to_input(images), training=False).items()}
      return endpoints, trunk.block3_units(endpoints) if lasso_units else ()

    return frozen

  def window_summaries(self):
    if not self.lasso_units:
      return None

    def alpha():  # The lasso mix's weight on each block-3 unit, per logging window.
      return {f'lasso/alpha_unit_{m + 1:02d}': a for m, a in enumerate(backbone.lasso_alpha(self.probes.lasso))}

    return alpha

  def score(self, ctx: Context, tune: FineTune, stats: Dict[str, Any]) -> Dict[str, Any]:
    cfg: LinearEvalConfig = ctx.section
    scores, counts = self.probe_scores(ctx, tune, stats, MAIN)
    grid, dims = self.grids[MAIN], self.dims[MAIN]
    main_name = 'lasso(block3 units)' if self.lasso_units else cfg.endpoint
    results = {
      'top1': scores[MAIN]['top1'],
      'top5': scores[MAIN]['top5'],
      'endpoint': main_name,
      'grid': grid,
      'dims': dims,
      'probes': self.probe_results(scores, MAIN),
      'protocol': {
        'trunk': 'frozen: inference-mode BatchNorm, no gradients',
        'features': f'{main_name} adaptive-max-pooled to {grid}x{grid} ({dims} dims)',
        'probe_grid_rule': self.grid_rule(cfg.probe_max_dims),
        'feature_norm': cfg.feature_norm,
        'train_augmentation': f'random {cfg.crop_size} crop of shorter side {cfg.image_size}, colour jitter',
        'test_crop': f'single centre {cfg.crop_size} crop of shorter side {cfg.image_size}',
        'top5': f'label among the {min(TOP_K, self.num_classes)} highest scores (ties: lower class first)',
        'preprocessing': ctx.preprocessing,
        'init_source': ctx.init,
      },
      'counts': counts,
    }
    if self.lasso_units:
      results['lasso_alpha'] = backbone.lasso_alpha(self.probes.lasso)
    return results


def run_linear(
  cfg: LinearEvalConfig,
  trunk: tf.keras.Model,
  model_dir: str,
  train_spec: str = '',
  validation_spec: str = '',
  preprocessing: str = 'rgb',
  init_source: str = '',
  progress: bool = True,
) -> Dict:
  """`LinearProtocol` on a built trunk of any kind (lasso needs ResNet-v2), outside `mtssl-eval`.

  Sources default to the section's; `init_source` is recorded in the results.

  Raises:
    ConfigError: a bad config value, a missing source or an endpoint the trunk lacks (named).
    FloatingPointError: a non-finite loss, naming the step.
  """
  ctx = LinearProtocol.direct_context(cfg, model_dir, train_spec, validation_spec, network=trunk,
                                      preprocessing=preprocessing, init=init_source, progress=progress)  # fmt: skip
  return LinearProtocol().run(ctx)
