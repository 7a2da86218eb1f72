"""absl binaries: each turns flags into a config and calls one library function."""

import os
import warnings

from absl import logging

# TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine) hides the output
# users came for; warnings and errors still show. Set the variable to 0 to see all.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TF's Python logger gets a stderr handler of its own unless the root logger has one when
# TF is imported (tf_logging.get_logger), and absl's app.run adds another: every TF line
# printed twice ('WARNING:tensorflow:...' and 'W1130 ...'). absl's handler first: once.
logging.use_absl_handler()
# Third-party import-time warnings nothing a user of mtssl_tf can act on: google-api-core
# (imported by TF's GCE cluster resolver) will drop this Python version in 2027;
# tensorflow_hub imports setuptools' deprecated pkg_resources.
warnings.filterwarnings('ignore', r'You are using a Python version .* google\.api_core', FutureWarning)
warnings.filterwarnings('ignore', r'pkg_resources is deprecated as an API', UserWarning)
