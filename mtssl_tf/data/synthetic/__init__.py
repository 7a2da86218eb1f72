"""The synthetic world: seeded procedural scenes and clips, written in the real formats."""
