"""Experiments: notebook runs, the pipeline, sweeps, reports, ablations and the README's generated parts."""
