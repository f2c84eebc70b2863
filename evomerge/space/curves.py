"""Per-layer values as a curve over depth: ``k`` control points, interpolated piecewise-linearly
as a mergekit gradient list is (``[a, b, c]`` over ``n`` layers puts ``a`` at layer 0, ``b`` at
the middle layer, ``c`` at the last), so an 80-layer model costs ``k`` genes per coefficient
instead of 80.

Curves are interpolated in the genes' unit space: a bound maps [0, 1] affinely onto its range,
so this is the same curve in value space, and a curve's per-layer unit values are exactly the
genes of a per-layer space that decodes to the same recipe (what a schedule's stages rely on).
"""

from __future__ import annotations

import numpy as np


def control_positions(k: int, n_layers: int) -> np.ndarray:
    """The (fractional) layer of each of ``k`` control points, evenly over the depth."""
    if k < 1 or n_layers < 1:
        raise ValueError(f"a curve needs k >= 1 control points and layers, got {k}, {n_layers}")
    if k == 1:
        return np.zeros(1)
    return np.linspace(0.0, n_layers - 1.0, k)


def expand(control: np.ndarray, n_layers: int) -> np.ndarray:
    """One value per layer from the control points (constant for one point)."""
    control = np.asarray(control, dtype=np.float64).reshape(-1)
    if len(control) == 1:
        return np.full(n_layers, control[0])
    return np.interp(
        np.arange(n_layers, dtype=np.float64), control_positions(len(control), n_layers), control
    )


def matrix(k: int, n_layers: int) -> np.ndarray:
    """(n_layers × k): the per-layer values are this matrix times the control points."""
    return np.stack([expand(np.eye(k)[j], n_layers) for j in range(k)], axis=1)


def sample(per_layer: np.ndarray, k: int) -> np.ndarray:
    """The control points of the curve closest to per-layer values (least squares): exact for
    values on such a curve, and bit-exact for a constant (a coarser stage's genes)."""
    per_layer = np.asarray(per_layer, dtype=np.float64).reshape(-1)
    if np.all(per_layer == per_layer[0]):
        return np.full(k, per_layer[0])
    return np.linalg.lstsq(matrix(k, len(per_layer)), per_layer, rcond=None)[0]
