"""Colour pictures of labels, for previews and reports (uint8 RGB out).

- depth: inverse depth through a perceptually ordered map (near = bright);
- normals: camera-frame normal ``n`` as ``((n_x, -n_y, -n_z) + 1) / 2``, so
  a surface facing the camera is blue;
- flow: hue = direction, saturation = magnitude (up to a maximum);
- mask: tissue grey, each instrument id its own colour, invalid black.
"""

from __future__ import annotations

import numpy as np

# Samples of a dark-blue -> teal -> green -> yellow ramp (perceptually ordered).
_RAMP = np.array([
    [0.267, 0.005, 0.329], [0.283, 0.141, 0.458], [0.254, 0.265, 0.530], [0.207, 0.372, 0.553],
    [0.164, 0.471, 0.558], [0.128, 0.567, 0.551], [0.135, 0.659, 0.518], [0.267, 0.749, 0.441],
    [0.478, 0.821, 0.318], [0.741, 0.873, 0.150], [0.993, 0.906, 0.144],
])
_INSTRUMENT_COLOURS = np.array([[230, 60, 60], [60, 160, 230], [240, 200, 40], [150, 80, 220], [60, 200, 120]])


def colormap(x: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] ``(...)`` to uint8 RGB ``(..., 3)``."""
    x = np.clip(np.nan_to_num(x), 0.0, 1.0) * (len(_RAMP) - 1)
    i = np.minimum(np.floor(x).astype(int), len(_RAMP) - 2)
    w = (x - i)[..., None]
    return np.round((_RAMP[i] * (1 - w) + _RAMP[i + 1] * w) * 255).astype(np.uint8)


def depth_to_rgb(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """``(H, W)`` depth in mm (0 = invalid, shown black) -> ``(H, W, 3)`` uint8.

    Inverse depth is normalised between ``1/far`` and ``1/near`` (default: the
    2nd and 98th percentiles of the valid depth).
    """
    valid = depth > 0
    out = np.zeros(depth.shape + (3,), dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(depth[valid], [2, 98])
    near = lo if near is None else near
    far = max(hi if far is None else far, near * 1.0001)
    inv = (1.0 / depth[valid] - 1.0 / far) / (1.0 / near - 1.0 / far)
    out[valid] = colormap(inv)
    return out


def normals_to_rgb(normals: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` camera-frame unit normals (zero = invalid) -> uint8 RGB."""
    valid = np.any(normals != 0, axis=-1)
    rgb = (normals * np.array([1.0, -1.0, -1.0]) + 1.0) * 0.5
    return np.where(valid[..., None], np.round(np.clip(rgb, 0, 1) * 255), 0).astype(np.uint8)


def flow_to_rgb(flow: np.ndarray, valid: np.ndarray | None = None, max_flow: float | None = None) -> np.ndarray:
    """``(H, W, 2)`` flow in px -> uint8 RGB on the HSV colour wheel (invalid black)."""
    valid = np.ones(flow.shape[:2], dtype=bool) if valid is None else valid
    mag = np.hypot(flow[..., 0], flow[..., 1])
    if max_flow is None:
        max_flow = float(np.percentile(mag[valid], 99)) if valid.any() else 1.0
    hue = (np.arctan2(-flow[..., 1], -flow[..., 0]) / np.pi + 1.0) * 3.0  # [0, 6)
    sat = np.clip(mag / max(max_flow, 1e-6), 0.0, 1.0)
    k = np.stack([(5 + hue) % 6, (3 + hue) % 6, (1 + hue) % 6], axis=-1)
    rgb = 1.0 - sat[..., None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    return np.where(valid[..., None], np.round(rgb * 255), 0).astype(np.uint8)


def mask_to_rgb(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8 labels -> uint8 RGB (tissue grey, instruments coloured, 255 black)."""
    out = np.full(mask.shape + (3,), 110, dtype=np.uint8)
    tool = (mask > 0) & (mask < 255)
    out[tool] = _INSTRUMENT_COLOURS[(mask[tool].astype(int) - 1) % len(_INSTRUMENT_COLOURS)]
    out[mask == 255] = 0
    return out


def tile(images: list[np.ndarray], columns: int, gap: int = 0) -> np.ndarray:
    """Arrange equally sized ``(H, W, 3)`` uint8 images in a grid."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // columns)
    out = np.zeros((rows * h + (rows - 1) * gap, columns * w + (columns - 1) * gap, 3), dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return out
