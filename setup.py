"""Packaging for mtssl_tf. Install with the pinned stack: see BUILD.md.

    pip install -c constraints.txt -e ".[dev]"

The loose requirements below say what the code needs; constraints.txt pins the one
resolution that is known to import (TF 2.15.1 with addons, io and Model Garden).
"""

import setuptools

setuptools.setup(
  name='mtssl_tf',
  version='0.1.0',
  description='Multi-task self-supervised visual learning (Doersch & Zisserman 2017; '
  'Noroozi et al. 2018) in TensorFlow 2 / Keras.',
  long_description=open('README.md', encoding='utf-8').read(),
  long_description_content_type='text/markdown',
  python_requires='>=3.9,<3.12',
  packages=setuptools.find_packages(include=['mtssl_tf', 'mtssl_tf.*']),
  # Shipped data (colour bins and prior, permutation sets), each with a PROVENANCE.md.
  package_data={'mtssl_tf': ['assets/*/*', 'configs/*.yaml']},
  install_requires=[
    'tensorflow==2.15.1',
    # Keras 2 is required by ParameterServerStrategy; TF 2.15 pins it.
    'tf-models-official==2.15.0',
    'tensorflow-addons==0.23.0',
    'tensorflow-io==0.36.0',
    # 1.21 needs protobuf >= 5.26 and breaks `import tensorflow_datasets` (BUILD.md).
    'tensorflow-metadata==1.16.1',
    'numpy>=1.23,<2',
    # Video decoding and dense optical flow for motion masks (tools/make_motion_masks.py);
    # 4.12+ needs numpy 2.
    'opencv-python-headless==4.11.0.86',
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
    # (as fast on CPU at paper dimensions within noise, and no extra dependency).
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
