"""A toy evaluation protocol, kept in the tests: the mean L2 norm of a trunk's pooled block-3 features.

It shows what adding a protocol takes: this module, one registry line (here the
`MTSSL_EVAL_PROTOCOLS` variable or `protocols.register`), its YAML, and a test.
"""

import dataclasses
from typing import Any, Dict

import tensorflow as tf

from mtssl_tf.configs.base import Config, ConfigError
from mtssl_tf.evaluation.classification import classification_dataset
from mtssl_tf.evaluation.protocol import Column, Context, Protocol


@dataclasses.dataclass
class FeatureNormConfig(Config):
  """Attributes: train_source/test_source (empty: the world's), image_size, max_images."""

  train_source: str = ''
  test_source: str = ''
  image_size: int = 32
  max_images: int = 8

  def validate(self) -> None:
    if self.max_images < 1:
      raise ConfigError(f'feature_norm.max_images: must be positive, got {self.max_images}')


class FeatureNormProtocol(Protocol):
  name = 'feature_norm'
  summary = 'mean L2 norm of the pooled block-3 features (a toy)'
  config_class = FeatureNormConfig
  headline = ('mean_norm',)
  columns = (Column('block3 norm', 'mean_norm', 1.0),)

  def run(self, ctx: Context) -> Dict[str, Any]:
    cfg = ctx.section
    data = classification_dataset(ctx.test_spec, image_size=cfg.image_size, crop_size=cfg.image_size,
                                  batch_size=cfg.max_images, training=False)  # fmt: skip
    images = next(iter(data))['image']
    trunk, to_input = ctx.trunk(), ctx.input_fn()
    pooled = tf.reduce_mean(trunk(to_input(images), training=False)['block3'], axis=[1, 2])
    results = {'mean_norm': float(tf.reduce_mean(tf.norm(pooled, axis=-1))), 'num_images': int(images.shape[0])}
    ctx.write_results(results)
    return results
