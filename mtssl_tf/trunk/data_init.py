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
off: deterministic numbers; the authors' Caffe net runs its TRAIN phase, dropout on); the
images are one batch the caller passes (magic_init reads `-nit` 10 batches of `-bs` 16:
160 images, this module's callers' default too).

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


def _channel_moments(outputs: tf.Tensor):
  """Mean and standard deviation of every channel (last axis) over all other axes, in float64."""
  flat = tf.reshape(tf.cast(outputs, tf.float64), [-1, outputs.shape[-1]])
  mean = tf.reduce_mean(flat, axis=0)
  return mean, tf.sqrt(tf.reduce_mean(tf.square(flat - mean), axis=0))


def _taps(net, images: tf.Tensor) -> Dict[str, Tuple[tf.Tensor, tf.Tensor]]:
  taps: Dict[str, Tuple[tf.Tensor, tf.Tensor]] = {}
  net.forward(images, training=False, taps=taps)
  return taps


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
  net, images: tf.Tensor, beta: float = BETA, calibrate: bool = True, seed: int = 0, min_std: float = 1e-8
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
    mean, std = _channel_moments(_taps(net, images)[name][1])
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
  rounds, ratios = calibrate_gradient_ratio(net, images, seed=seed)
  return InitReport(names, 'within+between layer', rounds, ratios)


def _mean_abs(x: tf.Tensor) -> float:
  return float(tf.reduce_mean(tf.abs(tf.cast(x, tf.float64))))


def _output_std(taps: Dict[str, Tuple[tf.Tensor, tf.Tensor]], last: str) -> float:
  return float(tf.reduce_mean(_channel_moments(taps[last][1])[1]))


def gradient_ratios(net, images: tf.Tensor, seed: int = 0, draw: int = 0) -> Dict[str, float]:
  """sqrt(mean(dW^2) / mean(W^2)) of every layer for a N(0, 1) gradient at the last layer's output."""
  layers = dict(net.weight_layers())
  last = list(layers)[-1]
  kernels = [layer.kernel for layer in layers.values()]
  with tf.GradientTape() as tape:
    out = _taps(net, images)[last][1]
    noise = tf.random.stateless_normal(out.shape, [seed, 1000 + draw], dtype=out.dtype)
    objective = tf.reduce_sum(out * noise)
  grads = tape.gradient(objective, kernels)
  ratios = {}
  for (name, _), w, g in zip(layers.items(), kernels, grads):
    ratios[name] = math.sqrt(float(tf.reduce_mean(tf.square(tf.cast(g, tf.float64))))
                             / float(tf.reduce_mean(tf.square(tf.cast(w, tf.float64)))))  # fmt: skip
  return ratios


def calibrate_gradient_ratio(
  net, images: tf.Tensor, seed: int = 0, rounds: int = CALIBRATION_ROUNDS, tolerance: float = CALIBRATION_TOLERANCE
) -> Tuple[int, Dict[str, float]]:
  """The between-layer step (magic_init's `calibrateGradientRatio`); returns (rounds run, final ratios).

  Args:
    net: as `data_dependent_init`, without BatchNorm.
    images: as `data_dependent_init`.
    seed: seed of the random output gradients (one draw per round).
    rounds: at most this many rescalings.
    tolerance: stop when every |log r_k / log target - 1| is below it.
  """
  layers = dict(net.weight_layers())
  names = list(layers)
  taps = _taps(net, images)
  bottom_scale = {name: _mean_abs(taps[name][0]) for name in names}
  output_std = _output_std(taps, names[-1])
  ratios: Dict[str, float] = {}
  for round_ in range(rounds + 1):
    ratios = gradient_ratios(net, images, seed, round_)
    logs = np.log(np.array([ratios[n] for n in names]))
    target = math.exp(float(np.mean(logs))) * output_std ** (1.0 / len(names))
    if np.all(np.abs(logs / math.log(target) - 1.0) < tolerance) or round_ == rounds:
      return round_, ratios
    for name in names:  # In network order: a layer's input already reflects the layers rescaled before it.
      layer = layers[name]
      current = _mean_abs(_taps(net, images)[name][0])
      scale = math.sqrt(ratios[name] / target)
      if layer.bias is not None:
        layer.bias.assign(layer.bias * (current / bottom_scale[name]) * scale)
      layer.kernel.assign(layer.kernel * scale)
      bottom_scale[name] = current
    output_std = _output_std(_taps(net, images), names[-1])
  return rounds, ratios
