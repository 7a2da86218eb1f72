"""The shared ResNet-v2 trunk and the lasso mixing of its block-3 units."""
