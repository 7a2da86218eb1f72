"""How an evaluation draws a random AlexNet (`--init=random`): data-dependent, as the paper's Random row.

Noroozi et al. 2018 Table 3's Random row (53.3 / 43.4 / 19.8) is Pathak et al. 2016's
"Random Gaussian" network with the initialisation of Krähenbühl et al. 2016 (`trunk.data_init`):
CaffeNet's fillers alone leave AlexNet too quiet to fine-tune. `EvalConfig.random_init`:

* 'data_dependent' (default): after the protocol builds its network (conv layers from the
  random trunk, its own fc layers), every conv and fc layer is rescaled on
  `random_init_images` of the protocol's own training images (within- and between-layer;
  BatchNorm networks get their BatchNorm statistics from the images instead); then the
  protocol proceeds as for any network (nonlinear re-draws the layers it trains).
* 'fillers': Caffe's Gaussian fillers only (std 0.01 / 0.005), the state before this option.

Only AlexNets (anything with `trunk.data_init`'s interface) are initialised; other random
trunks keep their initialisers.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import tensorflow as tf
from absl import logging

from mtssl_tf.configs.base import ConfigError
from mtssl_tf.data.sources import DataError
from mtssl_tf.evaluation import backbone
from mtssl_tf.trunk import data_init

DATA_DEPENDENT, FILLERS = 'data_dependent', 'fillers'
RANDOM_INITS = (DATA_DEPENDENT, FILLERS)
IMAGES = data_init.IMAGES  # magic_init's 10 batches of 16.


def check(random_init: str, images: int) -> None:
  """Raises ConfigError naming `random_init` / `random_init_images` when they are not usable."""
  if random_init not in RANDOM_INITS:
    raise ConfigError(f'random_init: must be one of {RANDOM_INITS}, got {random_init!r}')
  if images < 2:
    raise ConfigError(f'random_init_images: the statistics need at least 2 images, got {images}')


def sample_images(batches: Iterable, count: int, what: str = 'the training source') -> tf.Tensor:
  """The first `count` images of dict batches ({'image': [B, H, W, 3]}), concatenated (resized to the first's size).

  Raises:
    DataError: fewer than 2 images.
  """
  taken, total = [], 0
  for batch in batches:
    images = batch['image']
    taken.append(images)
    total += int(images.shape[0])
    if total >= count:
      break
  if total < 2:
    raise DataError(f'random_init: {what} gave {total} image(s); the data-dependent initialisation needs at least 2 '
                    '(or set random_init=fillers)')  # fmt: skip
  side = taken[0].shape[1:3]
  if any(t.shape[1:3] != side for t in taken):  # Whole-image protocols: batches differ in size.
    taken = [t if t.shape[1:3] == side else tf.cast(tf.round(tf.image.resize(tf.cast(t, tf.float32), side)), t.dtype)
             for t in taken]  # fmt: skip
  return tf.concat(taken, axis=0)[:count]


def initialise(
  ctx,
  net,
  batches: Callable[[], Iterable],
  to_input: Optional[Callable[[tf.Tensor], tf.Tensor]],
) -> str:
  """Initialises `net` from its protocol's training images when `ctx` asks for a data-dependent random network.

  Args:
    ctx: the protocol's `Context` (its `init`, `random_init`, `random_init_images`, `section.seed`).
    net: the AlexNet to initialise (every layer in `net.weight_layers()`).
    batches: makes the protocol's training batches ({'image': ...}); called only when needed.
    to_input: the protocol's images -> the network's input; None when the batches are already inputs.

  Returns:
    '' when nothing was done (not 'random', or 'fillers'), else what was done, for the results.
  """
  if ctx.init != backbone.RANDOM or ctx.random_init != DATA_DEPENDENT:
    return ''
  images = sample_images(batches(), ctx.random_init_images, f'{ctx.name} train source {ctx.train_spec}')
  inputs = to_input(images) if to_input is not None else images
  report = data_init.data_dependent_init(net, inputs, seed=getattr(ctx.section, 'seed', 0))
  note = f'{report.describe()} on {int(images.shape[0])} training images'
  if ctx.progress:
    logging.info('%s: %s', ctx.name, note)
  return note
