"""Video decoding and per-video mask computation: numpy + OpenCV only, no TensorFlow.

This is what `make_motion_masks` runs in its worker processes; keeping TensorFlow out
keeps each worker small (tens of MB instead of hundreds) and quick to start.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from mtssl_tf.data.motion.masks import MotionMaskConfig, motion_masks

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg')
FRAME_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')


class VideoError(ValueError):
  """A video or input path cannot be used; the message names it."""


@dataclasses.dataclass
class WriteOptions:
  """What is stored per frame.

  Attributes:
    frame_stride: keep every n-th frame (tracking still uses all of them).
    max_side: frames whose longer side exceeds this are downscaled before the
      mask is computed and stored (0 keeps the original size).
    max_frames: stop reading a video after this many frames (0: all).
    min_foreground: frames whose mask covers less than this fraction are skipped
      (0 keeps frames with nothing moving, as negatives).
    jpeg_quality: quality of the stored frame.
    mask: the mask algorithm's parameters.
  """

  frame_stride: int = 1
  max_side: int = 480
  max_frames: int = 0
  min_foreground: float = 0.0
  jpeg_quality: int = 95
  mask: MotionMaskConfig = dataclasses.field(default_factory=MotionMaskConfig)

  def validate(self) -> WriteOptions:
    """Raises ValueError naming the bad field; returns self."""
    if self.frame_stride < 1:
      raise ValueError(f'frame_stride must be >= 1, got {self.frame_stride}')
    if self.max_side < 0 or self.max_frames < 0:
      raise ValueError('max_side and max_frames must be >= 0')
    if not 0 <= self.min_foreground < 1:
      raise ValueError(f'min_foreground must be in [0, 1), got {self.min_foreground}')
    if not 1 <= self.jpeg_quality <= 100:
      raise ValueError(f'jpeg_quality must be in [1, 100], got {self.jpeg_quality}')
    self.mask.validate()
    return self


def list_videos(inputs: Sequence[str]) -> List[str]:
  """Video files and frame folders under `inputs` (files, folders or globs), sorted.

  A folder is a frame folder when it directly holds image files; otherwise it is
  searched recursively for video files and frame folders.

  Raises:
    VideoError: an input matches nothing, or nothing usable was found.
  """
  found = set()
  for item in inputs:
    matches = sorted(glob.glob(item)) if any(c in item for c in '*?[') else [item]
    if not matches or not all(os.path.exists(m) for m in matches):
      raise VideoError(f'motion masks: input {item!r} does not exist')
    for path in matches:
      if os.path.isfile(path):
        if path.lower().endswith(VIDEO_EXTENSIONS):
          found.add(path)
        else:
          raise VideoError(f'motion masks: {path!r} is not a video ({", ".join(VIDEO_EXTENSIONS)})')
        continue
      for directory, subdirs, files in os.walk(path):
        subdirs.sort()
        if any(f.lower().endswith(FRAME_EXTENSIONS) for f in files):
          found.add(directory)
          subdirs[:] = []  # A frame folder's sub-folders are not separate videos.
        found.update(os.path.join(directory, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS))
  if not found:
    raise VideoError(f'motion masks: no videos or frame folders found in {list(inputs)}')
  return sorted(found)


def _resize(frame: np.ndarray, max_side: int) -> np.ndarray:
  scale = max_side / max(frame.shape[:2]) if max_side else 1.0
  if scale >= 1:
    return frame
  size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
  return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def read_frames(
  path: str, max_side: int = 0, max_frames: int = 0, stats: Optional[Dict] = None
) -> Iterator[np.ndarray]:
  """RGB uint8 frames of a video file (OpenCV) or a folder of images (sorted by name).

  Unreadable frame files are skipped and counted in `stats['unreadable_frames']`;
  a frame of a different size from the first is skipped likewise.

  Raises:
    VideoError: the video cannot be opened.
  """
  stats = stats if stats is not None else {}
  stats.setdefault('unreadable_frames', 0)
  size = None
  count = 0
  if os.path.isdir(path):
    names = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
    sources = (cv2.imread(os.path.join(path, n), cv2.IMREAD_COLOR) for n in names)
  else:
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
      raise VideoError(f'motion masks: OpenCV cannot open video {path!r}')

    def frames_of():
      try:
        while True:
          ok, frame = capture.read()
          if not ok:
            return
          yield frame
      finally:
        capture.release()

    sources = frames_of()
  for bgr in sources:
    if bgr is None:
      stats['unreadable_frames'] += 1
      continue
    frame = _resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side)
    if size is None:
      size = frame.shape
    elif frame.shape != size:
      stats['unreadable_frames'] += 1
      continue
    yield frame
    count += 1
    if max_frames and count >= max_frames:
      break


def process_video(path: str, options: WriteOptions) -> Tuple[List[Tuple[bytes, bytes, int, int]], Dict]:
  """Motion masks of one video, encoded: ([(jpeg, png, frame_index, horizon)], stats).

  Never raises for bad data: an unopenable or undecodable video returns no frames
  and `stats['error']`.
  """
  stats = {'video': path, 'frames_read': 0, 'frames_written': 0, 'skipped_end_of_clip': 0, 'skipped_static': 0}
  records = []
  start = time.time()
  try:
    frames = read_frames(path, options.max_side, options.max_frames, stats)

    def counted():
      for frame in frames:
        stats['frames_read'] += 1
        yield frame

    for item in motion_masks(counted(), options.mask, options.frame_stride):
      if item.mask is None:
        stats['skipped_end_of_clip'] += 1
        continue
      if options.min_foreground and item.mask.mean() < options.min_foreground:
        stats['skipped_static'] += 1
        continue
      ok_jpeg, jpeg = cv2.imencode(
        '.jpg', cv2.cvtColor(item.frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, options.jpeg_quality]
      )
      ok_png, png = cv2.imencode('.png', item.mask.astype(np.uint8) * 255)
      if not (ok_jpeg and ok_png):
        raise VideoError(f'cannot encode frame {item.index}')
      records.append((jpeg.tobytes(), png.tobytes(), item.index, item.horizon))
  except (VideoError, ValueError, cv2.error) as e:
    stats['error'] = str(e)
    records = []
  stats['frames_written'] = len(records)
  stats['seconds'] = round(time.time() - start, 2)
  return records, stats
