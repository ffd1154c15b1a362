"""The run report: one self-contained HTML page (inline CSS, SVG and base64 PNG images; no scripts, no other files).

Sections, in order: summary, stage timings, metrics, camera path (an inline
SVG from :func:`camera_path_svg`), the test-frame strip (one row of pictures
per test frame with its caption), the fused mesh as a picture, the settings and
notes. All text is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from endo3d.core.fs import write_bytes_atomic
from endo3d.io.images import ZLIB_LEVEL, encode_png, rgb_to_uint8

_MARGIN = 30  # px between a camera-path panel's edge and its plot area (room for labels)
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.strip td { border: none; padding: 2px; }
table.strip td.caption { padding-bottom: 10px; color: #444; }
img { image-rendering: pixelated; }
"""


@dataclass
class StripRow:
    """One test frame in the report's strip.

    Attributes:
        index: frame number.
        images: pictures of the frame, uint8 ``(H, W, 3)`` (or float ``(3, H, W)``
            in [0, 1]), e.g. input, render, depth colour map.
        caption: e.g. ``"frame 9: PSNR 31.2 dB (nearest training frame 27.0 dB)"``.
    """

    index: int
    images: list[np.ndarray]
    caption: str


def camera_path_svg(c2w: np.ndarray, *, test: Sequence[int] = (), size: int = 360, units: str = "mm") -> str:
    """An inline SVG of the camera centres ``c2w[:, :3, 3]`` of ``(N, 4, 4)`` poses.

    Two ``size`` x ``size`` panels side by side: from above (x to the right, z
    up the page; the camera frame's y points down, so "above" is -y) and from
    the side (z to the right, y down the page). Each has a polyline through the
    N centres in frame order, a dot per camera, a green disc at the start, a red
    square at the end, rings around the ``test`` frames, axis names and a scale
    bar in ``units``. Both panels share one scale, ``px per unit = (size - 2 *
    margin) / extent`` with ``extent`` the largest coordinate range of the
    three axes (1 unit when the camera does not move), so lengths compare
    across panels and the aspect ratio is 1.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
        raise ValueError(f"camera_path_svg: c2w must be (N, 4, 4) with N >= 1, got shape {c2w.shape}")
    if not np.isfinite(c2w).all():
        raise ValueError("camera_path_svg: c2w has non-finite values")
    bad = [i for i in test if not 0 <= i < len(c2w)]
    if bad:
        raise ValueError(f"camera_path_svg: test frames {bad} are outside 0..{len(c2w) - 1}")
    centres = c2w[:, :3, 3]
    extent = float((centres.max(axis=0) - centres.min(axis=0)).max())
    scale = (size - 2 * _MARGIN) / (extent if extent > 0 else 1.0)
    panels = [
        _panel(centres[:, 0], centres[:, 2], ("x", "z", True), "from above", 0, size, scale, set(test), units),
        _panel(centres[:, 2], centres[:, 1], ("z", "y", False), "from the side", size, size, scale, set(test), units),
    ]
    legend = ('<text x="4" y="{y}" font-size="11" fill="#444">green disc: first frame, red square: last frame, '
              'rings: test frames</text>').format(y=size + 14)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * size}" height="{size + 20}" '
            f'viewBox="0 0 {2 * size} {size + 20}" font-family="sans-serif">'
            + "".join(panels) + legend + "</svg>")


def _panel(h: np.ndarray, v: np.ndarray, axes: tuple[str, str, bool], label: str, left: int, size: int,
           scale: float, test: set[int], units: str) -> str:
    """One panel of :func:`camera_path_svg`: the points ``(h, v)`` (pose units) centred in the square
    ``[left, left + size] x [0, size]`` at ``scale`` px per unit, ``h`` to the right and ``v`` up the page
    (``axes = (h name, v name, True)``) or down it (``False``)."""
    h_name, v_name, v_up = axes
    x = left + size / 2 + (h - (h.min() + h.max()) / 2) * scale
    y = size / 2 + (v - (v.min() + v.max()) / 2) * scale * (-1 if v_up else 1)
    points = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(x, y))
    parts = [
        f'<rect x="{left + 1}" y="1" width="{size - 2}" height="{size - 2}" fill="#fafafa" stroke="#bbb"/>',
        f'<text x="{left + 6}" y="16" font-size="12">{label}</text>',
        f'<polyline points="{points}" fill="none" stroke="#4a7bb7" stroke-width="1.5"/>',
        *(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="1.6" fill="#4a7bb7"/>' for a, b in zip(x, y)),
        *(f'<circle cx="{x[i]:.1f}" cy="{y[i]:.1f}" r="5" fill="none" stroke="#e08a00" stroke-width="1.5"/>'
          for i in sorted(test)),
        f'<circle cx="{x[0]:.1f}" cy="{y[0]:.1f}" r="4.5" fill="#2a9d3a"/>',
        f'<rect x="{x[-1] - 4:.1f}" y="{y[-1] - 4:.1f}" width="8" height="8" fill="#c62828"/>',
        _axes(left + size - 34, 44 if v_up else 26, h_name, v_name, v_up),
        _scale_bar(left + 8, size - 10, scale, (size - 2 * _MARGIN) / scale, units),
    ]
    return "".join(parts)


def _axes(x: float, y: float, h_name: str, v_name: str, v_up: bool) -> str:
    """Axis glyph from ``(x, y)``: an arrow 18 px to the right named ``h_name`` and one up or down the page
    named ``v_name``."""
    tip = y - 18 if v_up else y + 18
    return (f'<g stroke="#666" fill="#666" font-size="11"><line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}"/>'
            f'<line x1="{x}" y1="{y}" x2="{x}" y2="{tip}"/>'
            f'<text x="{x + 21}" y="{y + 4}" stroke="none">{h_name}</text>'
            f'<text x="{x - 3}" y="{tip - 3 if v_up else tip + 11}" stroke="none">{v_name}</text></g>')


def _scale_bar(x: float, y: float, scale: float, extent: float, units: str) -> str:
    """A horizontal bar of a round length (1, 2 or 5 times a power of ten, at most a third of ``extent``)."""
    length = _round_length(extent / 3)
    px = length * scale
    return (f'<g stroke="#222" font-size="11"><line x1="{x}" y1="{y}" x2="{x + px:.1f}" y2="{y}" stroke-width="2"/>'
            f'<text x="{x}" y="{y - 5}" stroke="none" fill="#222">{length:g} {html.escape(units)}</text></g>')


def _round_length(limit: float) -> float:
    """The largest of 1, 2, 5 times a power of ten that is at most ``limit`` (> 0)."""
    power = 10.0 ** math.floor(math.log10(limit))
    return max(step * power for step in (1, 2, 5) if step * power <= limit)


def write_report(path: str | os.PathLike[str], *, title: str, summary: Sequence[tuple[str, str]],
                 settings: Mapping[str, Any], timings: Mapping[str, float], metrics: Mapping[str, Any],
                 camera_svg: str, strips: Sequence[StripRow], mesh_image: np.ndarray | None,
                 strip_headings: Sequence[str] = ("input", "render", "depth"),
                 notes: Sequence[str | None] = ()) -> None:
    """Write the report page to ``path`` atomically (temporary file beside it, then rename).

    Args:
        title: page title and heading.
        summary: ``(key, value)`` rows, key facts first.
        settings: the run's settings; nested mappings become dotted keys.
        timings: seconds per stage, in order; shown with each stage's share of the total.
        metrics: scalars shown as numbers; lists and mappings shown as JSON.
        camera_svg: markup from :func:`camera_path_svg`, inserted as is (it is not escaped).
        strips: one row per test frame.
        strip_headings: a column heading per picture of a row (e.g. input,
            render, depth); every row has this many pictures. Empty: no headings
            and rows of any length.
        mesh_image: the fused mesh as a picture (:func:`endo3d.pipeline.fusion.mesh_picture`), or None.
        notes: remarks shown as a list (empty ones and None are left out).

    Raises:
        ValueError: a strip row whose picture count differs from ``strip_headings``.
    """
    for row in strips:
        if strip_headings and len(row.images) != len(strip_headings):
            raise ValueError(f"write_report: frame {row.index} has {len(row.images)} pictures for "
                             f"{len(strip_headings)} headings {list(strip_headings)}")
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Summary</h2>", _table(None, summary),
        "<h2>Stage timings</h2>", _timings_table(timings),
        "<h2>Metrics</h2>", _table(("metric", "value"), [(k, _format(v)) for k, v in metrics.items()]),
        "<h2>Camera path</h2>", camera_svg,
        "<h2>Test frames</h2>", _strip(strips, strip_headings),
        "<h2>Fused mesh</h2>",
        _img(mesh_image, "fused mesh") if mesh_image is not None else "<p>No mesh was fused.</p>",
        "<h2>Settings</h2>", _table(("setting", "value"), [(k, _format(v)) for k, v in _flatten(settings)]),
    ]
    notes = [note for note in notes if note]
    if notes:
        sections += ["<h2>Notes</h2>", "<ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n<body>\n"
            + "\n".join(sections) + "\n</body></html>\n")
    write_bytes_atomic(path, page.encode("utf-8"))


def _format(value: Any) -> str:
    """A table cell's text: floats to 4 significant digits, None as a dash, containers as JSON."""
    if value is None:
        return "\u2013"
    if isinstance(value, float | np.floating):
        return f"{float(value):.4g}"
    if isinstance(value, Mapping | list | tuple | np.ndarray):
        return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value, default=str)
    return str(value)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` -> ``[("a.b", 1)]``; non-mapping values are kept as they are."""
    rows: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        rows += _flatten(value, name + ".") if isinstance(value, Mapping) and value else [(name, value)]
    return rows


def _table(headings: Sequence[str] | None, rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """An HTML table of escaped text; columns in ``numeric`` are right-aligned."""
    head = "" if headings is None else _head_row(headings)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if i in numeric else ""}>{html.escape(str(cell))}</td>'
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table>{head}{body}</table>"


def _head_row(headings: Sequence[str]) -> str:
    """A table row of escaped column headings."""
    return "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings) + "</tr>"


def _timings_table(timings: Mapping[str, float]) -> str:
    """Stage, seconds and share of the total (``100 * seconds / total`` %), then the total."""
    total = float(sum(timings.values()))
    rows = [(stage, f"{s:.2f}", f"{100 * s / total:.1f} %" if total > 0 else "\u2013") for stage, s in timings.items()]
    rows.append(("total", f"{total:.2f}", "100.0 %" if total > 0 else "\u2013"))
    return _table(("stage", "seconds", "share"), rows, numeric=(1, 2))


def _strip(strips: Sequence[StripRow], headings: Sequence[str]) -> str:
    """The strip table: per test frame a row of pictures, then a row with its caption."""
    if not strips:
        return "<p>No test frames.</p>"
    columns = max(len(row.images) for row in strips)
    head = _head_row(headings) if headings else ""
    rows = []
    for row in strips:
        names = headings or [f"picture {i + 1}" for i in range(len(row.images))]
        cells = "".join(f"<td>{_img(image, f'frame {row.index} {name}')}</td>"
                        for image, name in zip(row.images, names))
        rows.append(f"<tr>{cells}</tr><tr><td class=caption colspan={columns}>{html.escape(row.caption)}</td></tr>")
    return f'<table class="strip">{head}{"".join(rows)}</table>'


def _img(image: np.ndarray, alt: str) -> str:
    """An ``<img>`` whose source is the picture as a ``data:image/png;base64`` URI."""
    rgb = rgb_to_uint8(image)
    png = encode_png(rgb, ZLIB_LEVEL, zlib.Z_DEFAULT_STRATEGY)
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
            f'width="{rgb.shape[1]}" height="{rgb.shape[0]}" alt="{html.escape(alt)}">')
