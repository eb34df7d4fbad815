"""Audio: log-mel front ends, the encoders and their one registry of specs, pretraining, the embeddings writer and their quality."""
