"""absl binaries: each turns flags into a config and calls one library function."""

import os

# TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine) hides the output
# users came for; warnings and errors still show. Set the variable to 0 to see all.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
