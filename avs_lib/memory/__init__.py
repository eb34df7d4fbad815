"""DDESeg's semantic memory: the algorithm (Eq. 2-4) and its files."""
