"""Seeded smooth random functions: periodic 2-D fields and 1-D signals.

Both are built from explicit random spectra, so they are reproducible from a
seed, smooth to any order, and cheap to evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    """``3 x^2 - 2 x^3`` of ``x`` clipped to [0, 1]."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def periodic_field(
    size: int, rng: np.random.Generator, min_period: float, max_period: float, slope: float = 1.0
) -> np.ndarray:
    """A periodic Gaussian random field on a ``size x size`` grid.

    Spectral synthesis: complex white noise shaped by ``|f|^-slope`` inside
    the band of periods ``[min_period, max_period]`` (in grid cells), zero
    outside, then an inverse FFT. The field tiles seamlessly.

    Returns:
        float32 ``(size, size)``, zero mean, unit standard deviation.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    band = (f >= 1.0 / max_period) & (f <= 1.0 / min_period)
    amp = np.where(band, np.maximum(f, 1e-9) ** -slope, 0.0)
    spectrum = (rng.standard_normal(amp.shape) + 1j * rng.standard_normal(amp.shape)) * amp
    field = np.fft.irfft2(spectrum, s=(size, size))
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def periodic_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with periodic boundaries of ``(size, size[, C])`` arrays; sigma in cells."""
    size = image.shape[0]
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx * fx + fy * fy))
    if image.ndim == 3:
        kernel = kernel[..., None]
    out = np.fft.irfft2(np.fft.rfft2(image, axes=(0, 1)) * kernel, s=image.shape[:2], axes=(0, 1))
    return out.astype(np.float32)


@dataclass(frozen=True)
class SmoothSignal:
    """A smooth random function of one variable with unit RMS.

    ``f(x) = sum_k a_k sin(2 pi x / P_k + phi_k) - offset`` with periods
    ``P_k`` log-uniform in ``[min_period, max_period]``, amplitudes ``a_k``
    normalised so that ``sum_k a_k^2 / 2 = 1`` (unit mean square over x),
    and ``offset`` either 0 or chosen so that ``f(0) = 0``.
    """

    periods: np.ndarray
    phases: np.ndarray
    amplitudes: np.ndarray
    offset: float

    @classmethod
    def create(
        cls, rng: np.random.Generator, min_period: float, max_period: float,
        terms: int = 4, zero_at_origin: bool = False,
    ) -> "SmoothSignal":
        periods = np.exp(rng.uniform(np.log(min_period), np.log(max_period), terms))
        phases = rng.uniform(0.0, 2.0 * np.pi, terms)
        amplitudes = rng.uniform(0.5, 1.0, terms)
        amplitudes *= np.sqrt(2.0 / np.sum(amplitudes**2))
        offset = float(np.sum(amplitudes * np.sin(phases))) if zero_at_origin else 0.0
        return cls(periods, phases, amplitudes, offset)

    def __call__(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)[..., None]
        return np.sum(self.amplitudes * np.sin(2.0 * np.pi * x / self.periods + self.phases), axis=-1) - self.offset
