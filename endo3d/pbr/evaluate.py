"""Evaluation of a fitted model: held-out image metrics, light and albedo recovery.

The scale ambiguity (:mod:`endo3d.pbr.model`) is resolved explicitly, and
only for comparisons with ground truth: the per-channel gauge ``s_c`` is the
least-squares factor that maps the fitted albedo onto the true one over the
training frames' tissue pixels, ``s_c = sum(a_true a_fit) / sum(a_fit^2)``
(true albedo from the simulator's ``albedo/`` maps). Then

- albedo error = mean ``|s_c a_fit - a_true|`` on the held-out frames;
- intensity (and ambient) after alignment = ``I_fit,c / s_c``, compared with
  the simulator's ``I_c``;
- gauge-free numbers need no ``s_c``: each light's falloff, its share of the
  total intensity ``I_k / sum_j I_j`` (per channel, averaged), its position.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from endo3d.render.lights import SpotLight

__all__ = ["albedo_gauge", "albedo_error", "compare_lights"]


def albedo_gauge(fitted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """``(3,)`` least-squares per-channel scale ``s`` with ``s * fitted ~ true``; both ``(n, 3)`` linear."""
    num = (fitted.double() * true.double()).sum(dim=0)
    den = fitted.double().square().sum(dim=0).clamp_min(1e-12)
    return (num / den).float()


def albedo_error(fitted: torch.Tensor, true: torch.Tensor, gauge: torch.Tensor) -> dict[str, float]:
    """Errors of ``gauge * fitted`` against ``true`` (``(n, 3)`` linear albedo)."""
    if len(true) == 0:
        return {"mae": math.nan, "relative": math.nan}
    diff = (fitted * gauge - true).abs()
    return {"mae": float(diff.mean()), "relative": float(diff.mean() / true.mean().clamp_min(1e-12))}


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def compare_lights(fitted: Sequence[SpotLight], reference: Sequence[dict[str, Any]], gauge: torch.Tensor | None,
                   fitted_ambient: torch.Tensor | None = None,
                   reference_ambient: Sequence[float] | None = None) -> dict[str, Any]:
    """Fitted lights against ``meta.json`` lights (same order), with relative errors.

    Args:
        fitted: the fitted lights.
        reference: the dataset's light entries (``SpotLight.to_json`` form).
        gauge: ``(3,)`` albedo gauge ``s_c`` (:func:`albedo_gauge`), or None when
            the true albedo is unknown (then absolute intensities are not compared).
        fitted_ambient, reference_ambient: ``(3,)`` ambient radiances, optional.

    Returns:
        Per light: falloff, share of the total intensity, position, and (with a
        gauge) the aligned intensity, each with its relative or absolute error;
        and the largest relative errors over the lights.
    """
    if len(reference) != len(fitted):
        return {"note": f"{len(fitted)} fitted lights, {len(reference)} in the dataset: not compared"}
    try:
        ref = [SpotLight.from_json(r) for r in reference]
    except (KeyError, ValueError, TypeError) as e:
        return {"note": f"the dataset's lights are not complete spot lights ({type(e).__name__}: {e}): not compared"}
    fit_total = sum(l.intensity for l in fitted)
    ref_total = sum(l.intensity for l in ref)
    per_light = []
    for f, r in zip(fitted, ref):
        share_f = (f.intensity / fit_total).mean().item()
        share_r = (r.intensity / ref_total).mean().item()
        entry: dict[str, Any] = {
            "falloff": {"fitted": float(f.falloff), "reference": float(r.falloff),
                        "relative_error": _rel(float(f.falloff), float(r.falloff))},
            "intensity_share": {"fitted": share_f, "reference": share_r, "relative_error": _rel(share_f, share_r)},
            "position_mm": {"fitted": [float(v) for v in f.position], "reference": [float(v) for v in r.position],
                            "error_mm": float(torch.linalg.norm(f.position - r.position))},
        }
        if gauge is not None:
            aligned = f.intensity / gauge
            rel = ((aligned - r.intensity).abs() / r.intensity.clamp_min(1e-12)).mean().item()
            entry["intensity_aligned"] = {"fitted": [float(v) for v in aligned],
                                          "reference": [float(v) for v in r.intensity], "relative_error": rel}
        per_light.append(entry)
    out: dict[str, Any] = {"lights": per_light}
    summary = {
        "falloff_relative_error": max(e["falloff"]["relative_error"] for e in per_light),
        "intensity_share_relative_error": max(e["intensity_share"]["relative_error"] for e in per_light),
        "position_error_mm": max(e["position_mm"]["error_mm"] for e in per_light),
    }
    if gauge is not None:
        summary["intensity_aligned_relative_error"] = max(e["intensity_aligned"]["relative_error"]
                                                          for e in per_light)
        total_f = (fit_total / gauge)
        summary["total_intensity_aligned_relative_error"] = float(
            ((total_f - ref_total).abs() / ref_total).mean())
    if gauge is not None and fitted_ambient is not None and reference_ambient is not None:
        ref_amb = torch.tensor([float(v) for v in reference_ambient])
        aligned = fitted_ambient / gauge
        out["ambient_aligned"] = {"fitted": [float(v) for v in aligned], "reference": [float(v) for v in ref_amb],
                                  "relative_error": float(((aligned - ref_amb).abs() / ref_amb.clamp_min(1e-12))
                                                          .mean())}
    out["summary"] = summary
    return out


def nan_to_none(value: Any) -> Any:
    """JSON-safe: NaN and inf become None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, np.generic):
        return nan_to_none(value.item())
    return value
