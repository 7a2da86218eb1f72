"""Data-dependent initialisation of a random network (Krähenbühl, Doersch, Donahue & Darrell, ICLR 2016).

Noroozi et al. 2018's Table 3 "Random" row (53.3 cls / 43.4 det / 19.8 seg) is copied from
Pathak et al. 2016 [27], whose random AlexNet is "Random Gaussian" with the initialisation
of Krähenbühl et al. [16]: CaffeNet's fillers (std 0.01 and 0.005) leave a network too quiet
to fine-tune in a few epochs, so every layer is rescaled on real images before training. The
procedure here follows the authors' reimplementation (philkr/magic_init, `magic_init.py`):

* Within-layer (`magicInitialize`, type 'elwise', the default): layer by layer in network
  order, the kernel is drawn from N(0, 1) and the bias zeroed; the layer's outputs on the
  images give each channel's mean m and standard deviation s; the kernel is divided by s and
  the bias set to `beta - m / s`, so every channel's pre-activation has mean `beta` (the
  code's `--bias`, default 0.1) and standard deviation 1 on those images.
* Between-layer (`calibrateGradientRatio`, the `-cs` flag): a random N(0, 1) gradient at the
  last layer's output is back-propagated; each layer's ratio r_k = sqrt(mean(dW^2) /
  mean(W^2)) is moved to the geometric mean of all ratios times output_std^(1/L) by scaling
  its weights and biases by sqrt(r_k / target), after first scaling its biases by how much
  its input's mean magnitude changed (which keeps a ReLU network's function apart from a
  scale); up to 10 rounds, ending when every log r_k is within 1% of log target.

Differences from magic_init, by choice: the statistics are taken in inference mode (dropout
off: deterministic numbers; the authors' Caffe net runs its TRAIN phase, dropout on). The
images (magic_init reads `-nit` 10 batches of `-bs` 16: 160 images, this module's callers'
default too) go through the network `batch_size` at a time, so memory follows the batch,
not the image count; statistics and gradients are summed over all of them.

BatchNorm networks (the small-world AlexNets) have no per-layer bias to set, and magic_init
refuses BatchNorm layers. For them the same per-channel affine goes into the BatchNorm's
inference statistics: layer by layer, its moving mean and variance become the mean and
variance (minus epsilon) of the layer's output on the images, gamma 1 and its offset `beta`,
so an inference-mode (frozen) BatchNorm passes each channel on at mean `beta` and std 1.
Kernels keep their draw (BatchNorm makes their scale irrelevant) and the between-layer step
is skipped (a BatchNorm layer's output does not depend on the scale of its weights).

The network must offer `weight_layers()` ({name: Conv2D/Dense} in network order) and
`forward(images, training, taps)` filling `taps[name] = (layer input, layer output)`:
`trunk.alexnet.AlexNet` and the cluster-classification AlexNet do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

BETA = 0.1  # magic_init.py --bias default: every unit's mean pre-activation (ReLUs start alive).
CALIBRATION_ROUNDS = 10  # magic_init.py calibrateGradientRatio: `for it in range(10)`.
CALIBRATION_TOLERANCE = 0.01  # ... ends when every |log r_k / log target - 1| < 0.01.
IMAGES = 160  # magic_init.py -nit 10 x -bs 16; the evaluations' default sample.
BATCH_SIZE = 16  # magic_init.py -bs: images per forward pass.


@dataclasses.dataclass
class InitReport:
  """What `data_dependent_init` did, for the run's log and results.

  Attributes:
    layers: the layers initialised, in order.
    mode: 'within+between layer', 'within layer' or 'batchnorm statistics'.
    calibration_rounds: between-layer rounds run (0 when skipped).
    ratios: the final gradient/weight ratio of each layer (between-layer only).
  """

  layers: List[str]
  mode: str
  calibration_rounds: int = 0
  ratios: Dict[str, float] = dataclasses.field(default_factory=dict)

  def describe(self) -> str:
    text = f'data-dependent init (Krähenbühl et al. 2016, {self.mode}) of {", ".join(self.layers)}'
    if self.calibration_rounds:
      text += f'; {self.calibration_rounds} between-layer rounds'
    return text


@dataclasses.dataclass
class _Stats:
  """One layer's statistics over all images: per-channel output mean and std, mean |input|."""

  mean: tf.Tensor
  std: tf.Tensor
  input_scale: float


def _chunks(images: tf.Tensor, batch_size: int):
  for start in range(0, int(images.shape[0]), batch_size):
    yield images[start : start + batch_size]


def _statistics(net, images: tf.Tensor, batch_size: int) -> Dict[str, _Stats]:
  """Every layer's `_Stats` over `images`, one forward pass per chunk of `batch_size` (sums in float64)."""
  sums: Dict[str, list] = {}
  for chunk in _chunks(images, batch_size):
    taps: Dict[str, Tuple[tf.Tensor, tf.Tensor]] = {}
    net.forward(chunk, training=False, taps=taps)
    for name, (x, y) in taps.items():
      flat = tf.reshape(tf.cast(y, tf.float64), [-1, y.shape[-1]])
      x64 = tf.cast(x, tf.float64)
      part = [tf.reduce_sum(flat, 0), tf.reduce_sum(tf.square(flat), 0), float(flat.shape[0]),
              float(tf.reduce_sum(tf.abs(x64))), float(tf.size(x64))]  # fmt: skip
      sums[name] = part if name not in sums else [a + b for a, b in zip(sums[name], part)]
  stats = {}
  for name, (total, squares, count, abs_total, size) in sums.items():
    mean = total / count
    stats[name] = _Stats(mean, tf.sqrt(tf.maximum(squares / count - tf.square(mean), 0.0)), abs_total / size)
  return stats


def _check(net, images: tf.Tensor) -> Dict[str, tf.keras.layers.Layer]:
  for attribute in ('weight_layers', 'forward'):
    if not callable(getattr(net, attribute, None)):
      raise TypeError(f'data_dependent_init needs a network with `{attribute}` (trunk.alexnet.AlexNet); '
                      f'got {type(net).__name__}')  # fmt: skip
  if int(images.shape[0]) < 2:
    raise ValueError(f'data_dependent_init needs at least 2 images for a standard deviation, got {images.shape[0]}')
  net(images[:1], training=False)  # Builds the layers (a no-op when built).
  return dict(net.weight_layers())


def data_dependent_init(
  net,
  images: tf.Tensor,
  beta: float = BETA,
  calibrate: bool = True,
  seed: int = 0,
  min_std: float = 1e-8,
  batch_size: int = BATCH_SIZE,
) -> InitReport:
  """Initialises every conv and fc layer of `net` from the statistics of its outputs on `images`.

  Args:
    net: a network with `weight_layers()` and `forward(images, training, taps)` (module docstring).
    images: [N, H, W, 3] float images in the network's input convention (N >= 2; magic_init uses 160).
    beta: every channel's mean pre-activation after the within-layer step (magic_init's 0.1).
    calibrate: also run the between-layer step (magic_init's `-cs`; the paper's full method).
      Ignored for BatchNorm networks.
    seed: seed of the N(0, 1) kernel draws.
    min_std: a channel whose output varies less than this (a dead input) is left unscaled.
    batch_size: images per forward pass (magic_init's -bs 16): memory follows it, not the
      image count; the statistics are sums over all images, whatever the split.

  Returns:
    An `InitReport`.

  Raises:
    TypeError: `net` lacks the interface.
    ValueError: fewer than 2 images.
  """
  layers = _check(net, images)
  images = tf.convert_to_tensor(images)
  norms = getattr(net, 'norms', {}) if getattr(net, 'batch_norm', False) else {}
  for index, (name, layer) in enumerate(layers.items()):
    kernel = layer.kernel
    kernel.assign(tf.cast(tf.random.stateless_normal(kernel.shape, [seed, index]), kernel.dtype))
    if layer.bias is not None:
      layer.bias.assign(tf.zeros_like(layer.bias))
    stats = _statistics(net, images, batch_size)[name]
    mean, std = stats.mean, stats.std
    live = std > min_std
    if name in norms:  # The per-channel affine goes into the frozen BatchNorm's statistics.
      norm = norms[name]
      variance = tf.maximum(tf.square(std) - norm.epsilon, 0.0)
      norm.moving_mean.assign(tf.cast(mean, norm.moving_mean.dtype))
      norm.moving_variance.assign(tf.cast(tf.where(live, variance, 1.0), norm.moving_variance.dtype))
      if norm.gamma is not None:
        norm.gamma.assign(tf.ones_like(norm.gamma))
      if norm.beta is not None:
        norm.beta.assign(tf.fill(norm.beta.shape, tf.cast(beta, norm.beta.dtype)))
      continue
    scale = tf.where(live, 1.0 / tf.maximum(std, min_std), 1.0)
    kernel.assign(tf.cast(tf.cast(kernel, tf.float64) * scale, kernel.dtype))  # Broadcast over the last axis.
    if layer.bias is not None:
      layer.bias.assign(tf.cast(beta - mean * scale, layer.bias.dtype))
  names = list(layers)
  if norms:
    return InitReport(names, 'batchnorm statistics')
  if not calibrate:
    return InitReport(names, 'within layer')
  rounds, ratios = calibrate_gradient_ratio(net, images, seed=seed, batch_size=batch_size)
  return InitReport(names, 'within+between layer', rounds, ratios)


def gradient_ratios(
  net, images: tf.Tensor, seed: int = 0, draw: int = 0, batch_size: int = BATCH_SIZE
) -> Dict[str, float]:
  """sqrt(mean(dW^2) / mean(W^2)) per layer for a N(0, 1) gradient at the last layer's output (summed over chunks)."""
  layers = dict(net.weight_layers())
  last = list(layers)[-1]
  kernels = [layer.kernel for layer in layers.values()]
  grads = [tf.zeros_like(k) for k in kernels]
  for index, chunk in enumerate(_chunks(images, batch_size)):
    with tf.GradientTape() as tape:
      taps: Dict[str, Tuple[tf.Tensor, tf.Tensor]] = {}
      net.forward(chunk, training=False, taps=taps)
      out = taps[last][1]
      noise = tf.random.stateless_normal(out.shape, [seed, 1000 + 1000 * draw + index], dtype=out.dtype)
      objective = tf.reduce_sum(out * noise)
    grads = [g + d for g, d in zip(grads, tape.gradient(objective, kernels))]
  ratios = {}
  for name, w, g in zip(layers, kernels, grads):
    ratios[name] = math.sqrt(float(tf.reduce_mean(tf.square(tf.cast(g, tf.float64))))
                             / float(tf.reduce_mean(tf.square(tf.cast(w, tf.float64)))))  # fmt: skip
  return ratios


def calibrate_gradient_ratio(
  net,
  images: tf.Tensor,
  seed: int = 0,
  rounds: int = CALIBRATION_ROUNDS,
  tolerance: float = CALIBRATION_TOLERANCE,
  batch_size: int = BATCH_SIZE,
) -> Tuple[int, Dict[str, float]]:
  """The between-layer step (magic_init's `calibrateGradientRatio`); returns (rounds run, final ratios).

  Args:
    net: as `data_dependent_init`, without BatchNorm.
    images: as `data_dependent_init`.
    seed: seed of the random output gradients (one draw per round).
    rounds: at most this many rescalings.
    tolerance: stop when every |log r_k / log target - 1| is below it.
    batch_size: images per forward pass.
  """
  layers = dict(net.weight_layers())
  names = list(layers)
  stats = _statistics(net, images, batch_size)
  bottom_scale = {name: stats[name].input_scale for name in names}
  output_std = float(tf.reduce_mean(stats[names[-1]].std))
  ratios: Dict[str, float] = {}
  for round_ in range(rounds + 1):
    ratios = gradient_ratios(net, images, seed, round_, batch_size)
    logs = np.log(np.array([ratios[n] for n in names]))
    target = math.exp(float(np.mean(logs))) * output_std ** (1.0 / len(names))
    if np.all(np.abs(logs / math.log(target) - 1.0) < tolerance) or round_ == rounds:
      return round_, ratios
    for name in names:  # In network order: a layer's input already reflects the layers rescaled before it.
      layer = layers[name]
      current = _statistics(net, images, batch_size)[name].input_scale
      scale = math.sqrt(ratios[name] / target)
      if layer.bias is not None:
        layer.bias.assign(layer.bias * (current / bottom_scale[name]) * scale)
      layer.kernel.assign(layer.kernel * scale)
      bottom_scale[name] = current
    output_std = float(tf.reduce_mean(_statistics(net, images, batch_size)[names[-1]].std))
  return rounds, ratios
