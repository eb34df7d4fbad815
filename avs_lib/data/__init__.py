"""Dataset loaders, checks and transforms for AVSBench S4/MS3/AVSS and VPO layouts."""
