"""The HTML report: tables hold the values, pictures decode to the right PNGs, text is escaped; the camera SVG."""

from __future__ import annotations

import base64
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from endo3d.io import read_png
from endo3d.pipeline.report import StripRow, camera_path_svg, write_report

SVG = "{http://www.w3.org/2000/svg}"


class Page(HTMLParser):
    """Collects tables (rows of cell texts), <img> attributes, list items, the title and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str]] = []
        self.items: list[str] = []
        self.title = ""
        self.text: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None
        self._where: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th", "li", "title"):
            self._cell, self._where = [], self._where + [tag]
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th", "li", "title") and self._cell is not None:
            text = "".join(self._cell)
            {"li": self.items.append, "title": lambda t: setattr(self, "title", t)}.get(
                tag, lambda t: self.tables[-1][-1].append(t))(text)
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def picture(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def helix(n: int) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    t = np.linspace(0, 4 * np.pi, n)
    c2w[:, :3, 3] = np.stack([10 * np.cos(t), 3 * np.sin(t), 2 * t], axis=1)
    return c2w


@pytest.fixture()
def report(tmp_path):
    strips = [StripRow(i, [picture(24, 32, 3 * i + k) for k in range(3)], f"frame {i}: PSNR {30 + i:.1f} dB")
              for i in (1, 9)]
    mesh = picture(40, 50, 99)
    path = tmp_path / "report.html"
    write_report(
        path, title="Run <script>alert(1)</script>", summary=[("input", "clip.mp4"), ("frames", "64")],
        settings={"depth": {"epochs": 3, "lr": 1e-4}, "device": "cpu", "test": [1, 9]},
        timings={"poses": 1.0, "depth": 3.0}, metrics={"psnr": 31.234567, "lpips": None, "test_frames": [1, 9],
                                                        "num_gaussians": 12345},
        camera_svg=camera_path_svg(helix(10), test=[1, 9]), strips=strips, mesh_image=mesh,
        notes=["poses are up to scale", None, "a <b>bold</b> claim & more"])
    page = Page()
    page.feed(path.read_text())
    return page, strips, mesh, path


def table_with(page: Page, cell: str) -> list[list[str]]:
    return next(t for t in page.tables if any(cell in row for row in t))


def decode(src: str) -> np.ndarray:
    """The image of a PNG data URI, read back with endo3d's own PNG reader."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):])
    assert data.startswith(b"\x89PNG")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "decoded.png"
        path.write_bytes(data)
        return read_png(path)


def test_tables_hold_the_values(report):
    page = report[0]
    assert ["input", "clip.mp4"] in table_with(page, "clip.mp4")
    timings = table_with(page, "poses")
    assert timings[0] == ["stage", "seconds", "share"]
    assert timings[1:] == [["poses", "1.00", "25.0 %"], ["depth", "3.00", "75.0 %"], ["total", "4.00", "100.0 %"]]
    metrics = table_with(page, "psnr")
    assert ["psnr", "31.23"] in metrics and ["test_frames", "[1, 9]"] in metrics
    assert ["num_gaussians", "12345"] in metrics and ["lpips", "\u2013"] in metrics
    settings = table_with(page, "depth.epochs")
    assert ["depth.epochs", "3"] in settings and ["depth.lr", "0.0001"] in settings and ["test", "[1, 9]"] in settings
    assert page.items == ["poses are up to scale", "a <b>bold</b> claim & more"]


def test_pictures_are_embedded_pngs_of_the_right_size(report):
    page, strips, mesh, path = report
    assert len(page.images) == 2 * 3 + 1
    expected = [image for row in strips for image in row.images] + [mesh]
    for attrs, image in zip(page.images, expected):
        np.testing.assert_array_equal(decode(attrs["src"]), image)
        assert (int(attrs["width"]), int(attrs["height"])) == (image.shape[1], image.shape[0])
    strip = table_with(page, "render")
    assert strip[0] == ["input", "render", "depth"]
    assert ["frame 9: PSNR 39.0 dB"] in strip
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # written atomically, nothing else
    assert "http" not in path.read_text().replace("http://www.w3.org/2000/svg", "")  # self-contained
    assert "script" not in page.tags and "b" not in page.tags


def test_text_is_escaped(report):
    page, _, _, path = report
    assert page.title == "Run <script>alert(1)</script>"
    assert "<script>" not in path.read_text()
    assert "Run &lt;script&gt;alert(1)&lt;/script&gt;" in path.read_text()


def test_without_mesh_and_with_other_headings(tmp_path):
    path = tmp_path / "r.html"
    rows = [StripRow(0, [picture(8, 8, 0), np.zeros((3, 8, 8), np.float32)], "c")]
    write_report(path, title="t", summary=[], settings={}, timings={"a": 0.0}, metrics={},
                 camera_svg=camera_path_svg(helix(1)), strips=rows, strip_headings=["input", "render"],
                 mesh_image=None)
    page = Page()
    page.feed(path.read_text())
    assert len(page.images) == 2 and (decode(page.images[1]["src"]) == 0).all()
    assert ["a", "0.00", "\u2013"] in table_with(page, "a")  # zero total: no share
    with pytest.raises(ValueError, match="2 pictures for 3 headings"):
        write_report(path, title="t", summary=[], settings={}, timings={}, metrics={}, camera_svg="",
                     strips=rows, mesh_image=None)


def svg_parts(svg: str) -> tuple[list[list[tuple[float, float]]], ET.Element]:
    root = ET.fromstring(svg)  # well-formed XML
    lines = [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
             for line in root.iter(SVG + "polyline")]
    return lines, root


def test_camera_path_svg_layout():
    c2w = helix(10)
    svg = camera_path_svg(c2w, test=[1, 9], size=300)
    lines, root = svg_parts(svg)
    assert root.get("width") == "600"
    assert len(lines) == 2 and all(len(line) == 10 for line in lines)
    top, side = np.array(lines[0]), np.array(lines[1])
    assert top[:, 0].max() <= 300 <= side[:, 0].min()  # two panels side by side
    # top view: x right, z up the page; side view: z right, y down; one scale, equal aspect
    centres = c2w[:, :3, 3]
    scale = np.polyfit(centres[:, 0], top[:, 0], 1)[0]
    np.testing.assert_allclose(np.diff(top[:, 1]), -scale * np.diff(centres[:, 2]), atol=0.15)
    np.testing.assert_allclose(np.diff(side[:, 0]), scale * np.diff(centres[:, 2]), atol=0.15)
    np.testing.assert_allclose(np.diff(side[:, 1]), scale * np.diff(centres[:, 1]), atol=0.15)
    assert scale == pytest.approx((300 - 2 * 30) / 25.1327, rel=1e-3)  # largest extent: z spans 8 pi
    rings = [c for c in root.iter(SVG + "circle") if c.get("fill") == "none"]
    assert len(rings) == 2 * 2
    texts = [t.text for t in root.iter(SVG + "text")]
    assert "5 mm" in texts and {"x", "y", "z"} <= set(texts)


@pytest.mark.parametrize("n", [1, 5])
def test_camera_path_svg_static_camera(n):
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, :3, 3] = [1.0, 2.0, 3.0]
    svg = camera_path_svg(c2w, units="units")
    assert "nan" not in svg and "inf" not in svg
    lines, root = svg_parts(svg)
    assert all(len(line) == n for line in lines)
    assert lines[0][0] == (180.0, 180.0) and lines[1][0] == (540.0, 180.0)  # centred in each panel
    assert "0.2 units" in [t.text for t in root.iter(SVG + "text")]


def test_camera_path_svg_rejects_bad_input():
    with pytest.raises(ValueError, match="outside"):
        camera_path_svg(helix(3), test=[3])
    with pytest.raises(ValueError, match="N >= 1"):
        camera_path_svg(np.zeros((0, 4, 4)))
