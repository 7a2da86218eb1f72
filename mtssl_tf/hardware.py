"""What the machine is: the CPU's name and the vector extensions that decide float speed.

Speed figures name the CPU they were measured on (a figure from an AVX512_BF16 machine
says little about an AVX2-only one), so the benchmarks print `describe_cpu()` first.
Reads /proc/cpuinfo on Linux; elsewhere only what `platform` knows. TensorFlow is imported
only to list GPUs, inside `gpu_bf16_support`.

`resolve_precision` turns `runtime.precision: auto` into a Keras dtype policy from what the
machine computes fast: bfloat16 emulated on a CPU without native support runs 7.7x slower
than float32 (issue 20, benchmarks/trunk_step.py on an AVX2-only EPYC), with it 1.3-1.5x faster.
"""

from __future__ import annotations

import os
import platform
from typing import List, Optional, Tuple

# /proc/cpuinfo flag -> the name people use, in the order printed.
_EXTENSIONS = (
  ('avx2', 'AVX2'),
  ('fma', 'FMA'),
  ('avx512f', 'AVX-512'),
  ('avx512_vnni', 'AVX512_VNNI'),
  ('avx512_bf16', 'AVX512_BF16'),
  ('amx_bf16', 'AMX_BF16'),
  ('amx_tile', 'AMX'),
)
# Either gives the CPU native bfloat16 arithmetic; without it bf16 is emulated (slower than float32).
NATIVE_BF16_FLAGS = ('avx512_bf16', 'amx_bf16')
# NVIDIA GPUs compute bfloat16 natively from compute capability 8.0 (Ampere) on.
MIN_BF16_COMPUTE_CAPABILITY = (8, 0)
# What `runtime.precision: auto` chooses between.
AUTO = 'auto'
MIXED_BF16 = 'mixed_bfloat16'
FLOAT32 = 'float32'


def _cpuinfo(path: str = '/proc/cpuinfo') -> Tuple[str, List[str]]:
  model, flags = '', []
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and not model:
          model = value.strip()
        elif key == 'flags' and not flags:
          flags = value.split()
        if model and flags:
          break
  except OSError:
    pass
  return model or platform.processor() or platform.machine() or 'unknown CPU', flags


def cpu_model(path: str = '/proc/cpuinfo') -> str:
  """The CPU's model name ('AMD EPYC', 'Intel(R) Xeon(R) ...')."""
  return _cpuinfo(path)[0]


def cpu_extensions(path: str = '/proc/cpuinfo') -> List[str]:
  """The float-relevant extensions the CPU reports (AVX2, AVX-512, AVX512_BF16, AMX...)."""
  flags = set(_cpuinfo(path)[1])
  return [name for flag, name in _EXTENSIONS if flag in flags]


def has_native_bf16(path: str = '/proc/cpuinfo') -> bool:
  """Whether the CPU computes bfloat16 natively (AVX512_BF16 or AMX)."""
  return bool(set(_cpuinfo(path)[1]) & set(NATIVE_BF16_FLAGS))


def describe_cpu(path: str = '/proc/cpuinfo') -> str:
  """One line for benchmark headers, e.g. 'AMD EPYC, 2 cores, AVX2 FMA AVX-512 AVX512_BF16'."""
  extensions = ' '.join(cpu_extensions(path)) or 'no AVX2'
  onednn = os.environ.get('TF_ENABLE_ONEDNN_OPTS')
  suffix = f', TF_ENABLE_ONEDNN_OPTS={onednn}' if onednn is not None else ''
  return f'{cpu_model(path)}, {os.cpu_count()} cores, {extensions}{suffix}'


def gpu_bf16_support() -> Optional[bool]:
  """Whether every visible GPU computes bfloat16 natively; None when TensorFlow sees no GPU.

  A GPU without a reported compute capability counts as not supporting it.
  """
  import tensorflow as tf  # Local: the CPU description above must not pay for it.

  gpus = tf.config.list_physical_devices('GPU')
  if not gpus:
    return None
  for gpu in gpus:
    capability = tf.config.experimental.get_device_details(gpu).get('compute_capability')
    if not capability or tuple(capability) < MIN_BF16_COMPUTE_CAPABILITY:
      return False
  return True


def explain_precision(setting: str) -> Tuple[str, str]:
  """The Keras dtype policy for a `precision` setting, and why (one phrase for the log).

  Args:
    setting: 'auto' or an explicit policy ('float32', 'mixed_bfloat16', 'mixed_float16').

  Returns:
    (policy, reason). An explicit setting is returned as is. 'auto': on a machine with GPUs
    they decide (mixed_bfloat16 if every GPU has compute capability >= 8.0, else float32),
    otherwise the CPU does (mixed_bfloat16 with AVX512_BF16 or AMX, else float32).
  """
  if setting != AUTO:
    return setting, 'set explicitly'
  gpu = gpu_bf16_support()
  if gpu is not None:
    if gpu:
      return MIXED_BF16, 'auto: every GPU computes bfloat16 natively (compute capability >= 8.0)'
    return FLOAT32, 'auto: a GPU without native bfloat16 (compute capability < 8.0)'
  if has_native_bf16():
    return MIXED_BF16, f'auto: the CPU computes bfloat16 natively ({" ".join(cpu_extensions())})'
  return FLOAT32, 'auto: the CPU has no native bfloat16 (neither AVX512_BF16 nor AMX; emulated bf16 is slower)'


def resolve_precision(setting: str) -> str:
  """The Keras dtype policy for a `precision` setting: 'auto' resolved by `explain_precision`."""
  return explain_precision(setting)[0]
