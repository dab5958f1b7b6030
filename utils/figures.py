"""Figures with matplotlib, headless: each one written as a PNG (for the eye) and a PDF beside it (vector, for
a paper).

No pyplot and no ``matplotlib.use``: a ``Figure`` with its own Agg canvas needs no GUI backend and leaves the
process's matplotlib state (backend, pyplot's figure list) as it was. Inside ``figure_files`` matplotlib's
default style applies whatever the user's matplotlibrc says, so figures (and their tests) look the same
everywhere; PDFs embed TrueType fonts (Type 42), which journals accept and which keep the text searchable.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from utils.checkpoint import atomic_write
from utils.run_files import pdf_name

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 150
STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.titlesize": 10, "legend.fontsize": 8,
         "axes.grid": True, "grid.color": "0.9", "axes.axisbelow": True, "savefig.dpi": DPI}
# Colour-blind-friendly (Okabe-Ito); CORRECT/WRONG are also told apart by a mark, never by colour alone.
CORRECT_COLOUR = "#009E73"
WRONG_COLOUR = "#D55E00"
NEUTRAL_COLOUR = "#404040"
CORRECT_MARK = "\u2713"         # check mark
WRONG_MARK = "\u2717"           # ballot x


def pdf_path(out_png: str | Path) -> Path:
    """Where the PDF of a figure goes: beside its PNG, same name."""
    return Path(out_png).with_name(pdf_name(Path(out_png).name))


@contextmanager
def figure_files(out_png: str | Path, width_in: float, height_in: float) -> Iterator["Figure"]:
    """A blank figure of the given size in inches; on leaving the block it is written to ``out_png`` and
    ``pdf_path(out_png)``, each atomically (a crash mid-write leaves the previous file; folders are made)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"), matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width_in, height_in), dpi=DPI)
        FigureCanvasAgg(fig)
        yield fig
        # no creation date: the same figure gives the same bytes
        atomic_write(out_png, lambda fh: fig.savefig(fh, format="png", dpi=DPI, metadata={"Software": None}))
        atomic_write(pdf_path(out_png), lambda fh: fig.savefig(
            fh, format="pdf", dpi=DPI, metadata={"CreationDate": None, "Creator": None, "Producer": None}))
