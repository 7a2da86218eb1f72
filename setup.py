"""Packaging for mtssl_tf. Install with the pinned stack of your Python's line: see BUILD.md.

    pip install -c constraints.txt -e ".[dev]"           # Python 3.9-3.11: reference line
    pip install -c constraints-current.txt -e ".[dev]"   # Python 3.12: current line

The loose requirements below say what the code needs; each constraints file pins the one
resolution of its line that is known to import and pass the tests. The line follows the
Python version (environment markers), because the two TensorFlow releases cover disjoint
Pythons for this stack: TF 2.15.1 (reference: with tensorflow-addons, tensorflow-io and
Model Garden 2.15) has wheels for 3.9-3.11 only, and Model Garden 2.20 (current) needs
TF ~=2.20, which `make` uses on 3.12.
"""

import setuptools

setuptools.setup(
  name='mtssl_tf',
  version='0.1.0',
  description='Multi-task self-supervised visual learning (Doersch & Zisserman 2017; '
  'Noroozi et al. 2018) in TensorFlow 2 / Keras.',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  # 3.9-3.11: reference line; 3.12: current line (the only Python its constraints file is resolved
  # and tested on).
  python_requires='>=3.9,<3.13',
  packages=setuptools.find_packages(include=['mtssl_tf', 'mtssl_tf.*']),
  # Shipped data (colour bins and prior, permutation sets), each with a PROVENANCE.md.
  package_data={'mtssl_tf': ['assets/*/*', 'configs/*.yaml']},
  install_requires=[
    # Reference line (Python 3.9-3.11): the one line-up where every named package co-installs.
    'tensorflow==2.15.1; python_version < "3.12"',
    # Keras 2 is required by ParameterServerStrategy; TF 2.15 pins it.
    'tf-models-official==2.15.0; python_version < "3.12"',
    'tensorflow-addons==0.23.0; python_version < "3.12"',
    'tensorflow-io==0.36.0; python_version < "3.12"',
    # 1.21 needs protobuf >= 5.26 and breaks `import tensorflow_datasets` (BUILD.md).
    'tensorflow-metadata==1.16.1; python_version < "3.12"',
    'numpy>=1.23,<2; python_version < "3.12"',
    # Current line (Python 3.12): Model Garden 2.20 requires tensorflow ~=2.20.0 and
    # tensorflow-text ~=2.20.0 (it has no 2.21 release), so TF 2.20. tf.keras is Keras 3
    # there; Keras 2 (which ParameterServerStrategy needs) is the tf-keras package, routed
    # into tf.keras by TF_USE_LEGACY_KERAS=1 (mtssl_tf/__init__.py sets it). No
    # tensorflow-addons (no 3.12 wheel; it imports Keras 3 internals) and no tensorflow-io
    # (its kernels do not load on TF >= 2.17); the code uses neither.
    'tensorflow~=2.20.0; python_version >= "3.12"',
    'tf-keras~=2.20.0; python_version >= "3.12"',
    'tf-models-official~=2.20.0; python_version >= "3.12"',
    'tensorflow-text~=2.20.0; python_version >= "3.12"',
    # TF >= 2.20 no longer installs it, and without it tf.summary raises TBNotInstalledError.
    'tensorboard~=2.20.0; python_version >= "3.12"',
    'numpy>=2,<3; python_version >= "3.12"',
    # TensorBoard (2.15 and 2.20) imports pkg_resources without declaring it; setuptools 81
    # removed pkg_resources.
    'setuptools<81',
    # Video decoding and dense optical flow for motion masks (tools/make_motion_masks.py),
    # HOG for the transfer controls. 4.12+ needs numpy 2 (so 4.11 on the reference line);
    # 5.x removed cv2.HOGDescriptor (mtssl_tf/transfer/hog.py), so below 5 on both.
    'opencv-python-headless==4.11.0.86; python_version < "3.12"',
    'opencv-python-headless>=4.11,<5; python_version >= "3.12"',
    # Felzenszwalb-Huttenlocher graph segmentation for selective search
    # (mtssl_tf/evaluation/selective_search.py): OpenCV's is in the contrib build (cv2.ximgproc),
    # which cannot be installed beside tf-models-official's opencv-python-headless.
    'scikit-image',
    # Selective search's optional downscale (bicubic, as MATLAB's imresize); already pinned for
    # tf-models-official, declared because our code imports it.
    'Pillow',
    # NYU Depth v2's labeled .mat file is HDF5.
    'h5py',
    # Figures of the experiment grid (Doersch Figures 3 and 4), also in TensorBoard.
    'matplotlib',
    # Adjusted Rand index in the k-means tests and the scikit-learn k-means baseline.
    'scikit-learn',
    'absl-py',
    'pyyaml',
  ],
  extras_require={
    'dev': ['pytest', 'pytest-xdist', 'ruff'],
    # Optional: benchmarks/kmeans.py compares against faiss; the default engine is TF's
    # (0.72x faiss-cpu per Lloyd pass natively, 0.98x with AVX2 emulated, loaded runs, benchmarks/README.md; runs on a
    # GPU; no extra dep).
    'faiss': ['faiss-cpu'],
  },
  entry_points={
    'console_scripts': [
      'mtssl-summary=mtssl_tf.bin.summary:run',
      'mtssl-train=mtssl_tf.bin.train:run',
      'mtssl-export=mtssl_tf.bin.export:run',
      'mtssl-eval=mtssl_tf.bin.evaluate:run',
      'mtssl-transfer=mtssl_tf.bin.transfer:run',
    ],
  },
)
