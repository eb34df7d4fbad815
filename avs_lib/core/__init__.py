"""The bottom layer: configs, paths, errors, atomic files, run-folder locks, the embedding cache and process pools."""
