"""Config files that ship inside the package (a pip-installed user has no `configs/`)."""

import os

# The run `mtssl-train` (and `make demo`) does without --config.
DEMO_CONFIG = os.path.join(os.path.dirname(__file__), 'local_demo.yaml')
