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


def _machine(monkeypatch, cpu_bf16, gpu=None):
  """Mocks the detection: the CPU's native bf16 and the GPUs' (None: no GPU)."""
  monkeypatch.setattr(hardware, 'has_native_bf16', lambda path='/proc/cpuinfo': cpu_bf16)
  monkeypatch.setattr(hardware, 'gpu_bf16_support', lambda: gpu)


def test_auto_precision_is_float32_without_native_bf16(monkeypatch):
  _machine(monkeypatch, cpu_bf16=False)
  assert hardware.resolve_precision('auto') == 'float32'
  # A GPU decides over the CPU: an older GPU (compute capability < 8.0) keeps float32.
  _machine(monkeypatch, cpu_bf16=True, gpu=False)
  policy, why = hardware.explain_precision('auto')
  assert policy == 'float32' and 'GPU' in why


def test_auto_precision_is_bf16_with_native_bf16(monkeypatch):
  _machine(monkeypatch, cpu_bf16=True)
  policy, why = hardware.explain_precision('auto')
  assert policy == 'mixed_bfloat16' and 'CPU' in why
  _machine(monkeypatch, cpu_bf16=False, gpu=True)
  assert hardware.resolve_precision('auto') == 'mixed_bfloat16'


def test_explicit_precision_wins(monkeypatch):
  _machine(monkeypatch, cpu_bf16=True)
  assert hardware.explain_precision('float32') == ('float32', 'set explicitly')
  _machine(monkeypatch, cpu_bf16=False)
  assert hardware.resolve_precision('mixed_bfloat16') == 'mixed_bfloat16'


def test_gpu_detection_on_this_machine_answers():
  # No GPU in CI: None; with GPUs a bool. Either way it runs without error.
  assert hardware.gpu_bf16_support() in (None, True, False)
