"""Export: SavedModels of the trunk for downstream teams."""
