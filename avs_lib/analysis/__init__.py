"""Analyses of trained models and of a world with known sources: truth, statistics, metrics, evaluation, probes."""
