"""Trainers: one-process multi-task training and, for clusters, ParameterServerStrategy."""
