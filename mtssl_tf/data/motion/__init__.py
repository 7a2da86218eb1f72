"""Motion masks from video: the mask algorithm, its TFRecord writer and reader."""
