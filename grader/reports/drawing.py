"""The figures of the feedback pages: a page's plots are collected while its view is assembled, then
drawn together, in one process or several forked ones, as embedded PNG images.

Plots use matplotlib's object-oriented ``Figure`` API with the Agg renderer (no pyplot, so no
global figure registry and nothing to close); a plot that cannot be drawn becomes a sentence saying
so, never a missing page.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

KIND_COLOR = {"l1": "#0072B2", "l2": "#E69F00"}
PASS_COLOR, FAIL_COLOR, REF_COLOR = "#009E73", "#D55E00", "#8c8c8c"
FIG_WIDTH = 4.8  # inches; at 96 CSS px per inch a figure is at most 461 px wide, readable on a phone
PNG_DPI = 144  # 1.5 image pixels per CSS pixel: sharp on high-density screens, small files
CSS_PX_PER_INCH = 96
_RC = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9}

Build = Callable[[], Figure]


@dataclasses.dataclass
class Plot:
    """One figure: a PNG data URI (or None when there is nothing true to draw) and the text around it.

    Built while a page's view is assembled; its image is filled in when the page's figures are
    drawn (``batch``).
    """

    title: str
    image: str | None
    width: int
    alt: str
    notes: list[str]


class Figures:
    """The figures of one page, queued by ``plot`` and drawn together by ``draw``."""

    def __init__(self) -> None:
        self._queue: list[tuple[Plot, Build]] = []

    def plot(self, title: str, alt: str, notes: list[str], build: Build) -> Plot:
        """A plot of ``build()``, whose image is filled in when the figures are drawn."""
        plot = Plot(title, None, 0, alt, list(notes))
        self._queue.append((plot, build))
        return plot

    def draw(self, processes: int) -> None:
        """Draw every queued figure, in ``processes`` processes, and give each plot its image."""
        queue, self._queue = self._queue, []
        for (plot, _), drawn in zip(queue, _draw_all([build for _, build in queue], processes)):
            _fill(plot, drawn)


@contextlib.contextmanager
def batch(processes: int) -> Iterator[Figures]:
    """The figures of the views built inside the block, all drawn, in ``processes`` processes, on leaving it."""
    figures = Figures()
    yield figures
    figures.draw(processes)


def new_figure(height: float) -> Figure:
    """An empty figure of the pages' width, ``height`` inches high."""
    fig = Figure(figsize=(FIG_WIDTH, height), dpi=PNG_DPI, layout="constrained", facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def figure(height: float) -> tuple[Figure, Any]:
    """A figure of the pages' width with one set of axes."""
    fig = new_figure(height)
    return fig, fig.add_subplot()


def _fill(plot: Plot, drawn: bytes | str) -> None:
    """Give a plot its image, or, when drawing failed, a sentence saying so (never a broken page)."""
    if isinstance(drawn, bytes):
        plot.image = "data:image/png;base64," + base64.b64encode(drawn).decode("ascii")
        plot.width = round(FIG_WIDTH * CSS_PX_PER_INCH)
    else:
        plot.notes.append(f"This plot could not be drawn ({drawn}).")


def _png_or_error(build: Build) -> bytes | str:
    try:
        with warnings.catch_warnings(), matplotlib.rc_context(cast(Any, _RC)):
            warnings.simplefilter("ignore")  # a font or layout warning must not fail a grading run
            fig = build()
            png = _png(fig)
            fig.clear()
        return png
    except Exception as exc:  # noqa: BLE001 - the page must still be written
        return f"{type(exc).__name__}: {exc}"


_FORKED_BUILDS: list[Build] = []  # what forked drawing processes inherit (see _draw_all)


def _draw_all(builds: list[Build], processes: int) -> list[bytes | str]:
    """Draw every figure, split over forked processes when more than one is allowed (Linux), else here.

    The figures of a page are independent, and drawing them is most of the time a page takes: with
    2 processes a page is ready in about half the time. The children are forks of this process
    (they inherit the figure builders, through ``_FORKED_BUILDS``, and the imported libraries, and only
    draw and return PNG bytes); if forking or a child fails, everything is drawn here instead, with
    the same result.
    """
    import multiprocessing

    processes = min(processes, len(builds))
    if processes > 1 and "fork" in multiprocessing.get_all_start_methods():
        _FORKED_BUILDS[:] = builds
        try:
            with multiprocessing.get_context("fork").Pool(processes) as pool:
                return list(pool.map(_draw_forked, range(len(builds)), chunksize=1))
        except Exception:  # noqa: BLE001 - drawing here gives the same figures
            pass
        finally:
            _FORKED_BUILDS.clear()
    return [_png_or_error(build) for build in builds]


def _draw_forked(index: int) -> bytes | str:
    return _png_or_error(_FORKED_BUILDS[index])


def _png(fig: Figure) -> bytes:
    """Draw with Agg and encode a 256-colour palette PNG: a third of the size of a true-colour one, and
    indistinguishable for these flat-coloured plots."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    out = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, format="PNG", optimize=True)
    return out.getvalue()
