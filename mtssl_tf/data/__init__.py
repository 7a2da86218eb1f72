"""Data layer: readers for images, video-derived motion masks, detection and depth."""
