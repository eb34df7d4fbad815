"""Composed AVS worlds: asset libraries, clip composition, AVSBench/VPO writers."""
