"""The PASCAL VOC colour palette that AVSBench-Semantic's ``labels_rgb`` PNGs use."""
from __future__ import annotations

import numpy as np


def voc_palette(n: int = 256) -> np.ndarray:
    """[n, 3] uint8: colour of class i by interleaving the bits of i into R, G and B
    (1 -> (128, 0, 0), 2 -> (0, 128, 0), 3 -> (128, 128, 0), ...)."""
    palette = np.zeros((n, 3), np.uint8)
    for index in range(n):
        value, r, g, b = index, 0, 0, 0
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def colours_to_indices(rgb: np.ndarray, n_classes: int = 256) -> np.ndarray:
    """[H, W, 3] palette colours -> [H, W] class indices; colours outside the palette give -1."""
    palette = voc_palette(n_classes).astype(np.int64)
    codes = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    lookup = {int(code): index for index, code in enumerate(palette_codes)}
    out = np.full(codes.shape, -1, np.int64)
    for code in np.unique(codes):
        out[codes == code] = lookup.get(int(code), -1)
    return out
