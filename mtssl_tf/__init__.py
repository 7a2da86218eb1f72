"""mtssl_tf: multi-task self-supervised visual learning in TensorFlow 2 / Keras."""

__version__ = '0.1.0'
