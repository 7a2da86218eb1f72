"""CPU description for benchmark headers and the bf16 decision."""

from mtssl_tf import hardware

AVX2_ONLY = 'processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n'
BF16 = (
  'model name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t: avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile\n'
)


def test_avx2_only_cpu(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text(AVX2_ONLY)
  assert hardware.cpu_model(str(path)) == 'AMD EPYC 7B13'
  assert hardware.cpu_extensions(str(path)) == ['AVX2', 'FMA']
  assert not hardware.has_native_bf16(str(path))
  assert hardware.describe_cpu(str(path)).startswith('AMD EPYC 7B13, ')


def test_native_bf16_cpu(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text(BF16)
  assert hardware.has_native_bf16(str(path))
  assert hardware.cpu_extensions(str(path)) == [
    'AVX2',
    'FMA',
    'AVX-512',
    'AVX512_VNNI',
    'AVX512_BF16',
    'AMX_BF16',
    'AMX',
  ]


def test_missing_cpuinfo_still_describes(tmp_path):
  text = hardware.describe_cpu(str(tmp_path / 'absent'))
  assert 'no AVX2' in text and hardware.cpu_extensions(str(tmp_path / 'absent')) == []
