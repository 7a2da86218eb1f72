"""Synthetic classification images, written as the real readers expect them.

`write_image_tfrecords` produces Model Garden-style shards (`image/encoded`,
`image/class/label`); `write_image_folder` produces one sub-folder per class. Both
go through `scenes.render_scene`, so each image's label is the class of its nearest
object. `odd_images` makes the awkward files real collections contain (grayscale,
RGBA, 16-bit, CMYK, tiny, truncated, zero-byte) for robustness tests.
"""

from __future__ import annotations

import io
import os
from typing import Dict, List, Optional

import cv2
import numpy as np
import tensorflow as tf
from PIL import Image

from mtssl_tf.data.synthetic.scenes import CLASS_NAMES, render_scene


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
  """RGB uint8 -> JPEG bytes."""
  ok, data = cv2.imencode('.jpg', cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
  assert ok
  return data.tobytes()


def encode_png(image: np.ndarray) -> bytes:
  """RGB(A) or gray uint8/uint16 -> PNG bytes."""
  if image.ndim == 3 and image.shape[-1] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  elif image.ndim == 3 and image.shape[-1] == 4:
    image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
  ok, data = cv2.imencode('.png', image)
  assert ok
  return data.tobytes()


def image_example(encoded: bytes, label: int) -> tf.train.Example:
  """A Model Garden image classification Example."""
  return tf.train.Example(
    features=tf.train.Features(
      feature={
        'image/encoded': tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        'image/class/label': tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
      }
    )
  )


def write_image_tfrecords(
  output_dir: str,
  num_images: int,
  num_shards: int = 2,
  size: int = 96,
  num_classes: int = len(CLASS_NAMES),
  seed: int = 0,
  prefix: str = 'train',
  label_offset: int = 0,
  class_cue: str = 'colour',
) -> List[str]:
  """Writes `num_images` labelled scenes into `num_shards` TFRecord files.

  Labels are balanced (image i has class i mod K) and stored plus `label_offset`
  (1 mimics Model Garden ImageNet, where 0 is background). `class_cue` is how classes
  look (`scenes.CLASS_CUES`).

  Returns:
    The shard paths (`<prefix>-00000-of-00002`, ...).
  """
  rng = np.random.default_rng(seed)
  tf.io.gfile.makedirs(output_dir)
  paths = [os.path.join(output_dir, f'{prefix}-{i:05d}-of-{num_shards:05d}') for i in range(num_shards)]
  writers = [tf.io.TFRecordWriter(p) for p in paths]
  try:
    for i in range(num_images):
      scene = render_scene(rng, size, size, num_classes=num_classes, label=i % num_classes, class_cue=class_cue)
      example = image_example(encode_jpeg(scene.image), scene.label + label_offset)
      writers[i % num_shards].write(example.SerializeToString())
  finally:
    for w in writers:
      w.close()
  return paths


def write_image_folder(
  root: str,
  num_images: int,
  size: int = 96,
  num_classes: int = len(CLASS_NAMES),
  seed: int = 0,
  class_cue: str = 'colour',
) -> Dict[str, int]:
  """Writes scenes as `root/<class name>/<n>.jpg` (every 4th one as PNG), classes looking as `class_cue` says.

  Returns:
    Images written per class name.
  """
  rng = np.random.default_rng(seed)
  counts: Dict[str, int] = {}
  for i in range(num_images):
    cls = i % num_classes
    scene = render_scene(rng, size, size, num_classes=num_classes, label=cls, class_cue=class_cue)
    folder = os.path.join(root, CLASS_NAMES[cls])
    os.makedirs(folder, exist_ok=True)
    png = i % 4 == 3
    data = encode_png(scene.image) if png else encode_jpeg(scene.image)
    with open(os.path.join(folder, f'{i:06d}.{"png" if png else "jpg"}'), 'wb') as f:
      f.write(data)
    counts[CLASS_NAMES[cls]] = counts.get(CLASS_NAMES[cls], 0) + 1
  return counts


def odd_images(seed: int = 0, size: int = 64, tiny: int = 12) -> Dict[str, Optional[bytes]]:
  """Encoded images of the awkward kinds found in real collections.

  Returns:
    name -> bytes. Decodable kinds: 'rgb_jpeg', 'gray_jpeg', 'cmyk_jpeg', 'rgba_png',
    'gray_png', 'gray_alpha_png', 'png16', 'tiny_jpeg', 'bmp', 'gif'. Undecodable kinds:
    'truncated_jpeg', 'garbage', 'empty'. Each decodable image is the same scene.
  """
  rng = np.random.default_rng(seed)
  rgb = render_scene(rng, size, size).image
  gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
  rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 200, np.uint8)], -1)

  def pil_bytes(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()

  full = encode_jpeg(rgb)
  return {
    'rgb_jpeg': full,
    'gray_jpeg': cv2.imencode('.jpg', gray)[1].tobytes(),
    'cmyk_jpeg': pil_bytes(Image.fromarray(rgb).convert('CMYK'), 'JPEG'),
    'rgba_png': encode_png(rgba),
    'gray_png': encode_png(gray),
    'gray_alpha_png': pil_bytes(Image.fromarray(np.stack([gray, gray], -1), 'LA'), 'PNG'),
    'png16': encode_png(rgb.astype(np.uint16) * 257),
    'tiny_jpeg': encode_jpeg(cv2.resize(rgb, (tiny, tiny), interpolation=cv2.INTER_AREA)),
    'bmp': pil_bytes(Image.fromarray(rgb), 'BMP'),
    'gif': pil_bytes(Image.fromarray(rgb).convert('P'), 'GIF'),
    'truncated_jpeg': full[: len(full) // 2],
    'garbage': rng.integers(0, 256, 500, dtype=np.uint8).tobytes(),
    'empty': b'',
  }
