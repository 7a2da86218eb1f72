"""What the machine is: the CPU's name and the vector extensions that decide float speed.

Speed figures name the CPU they were measured on (a figure from an AVX512_BF16 machine
says little about an AVX2-only one), so the benchmarks print `describe_cpu()` first.
Reads /proc/cpuinfo on Linux; elsewhere only what `platform` knows. No TensorFlow import.
"""

from __future__ import annotations

import os
import platform
from typing import List, Tuple

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
