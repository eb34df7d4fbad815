"""The bottom layer: configs, paths, errors, atomic files, run-folder locks and the embedding cache."""
