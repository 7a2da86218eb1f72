"""Cluster plumbing for ParameterServerStrategy training."""
