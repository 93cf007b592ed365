"""Matplotlib without a display: one place for the backend and for writing figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Writes ``fig`` to ``path`` (creating its folder) and closes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    pyplot().close(fig)
    return path


def image_grid(rows: list[list[Any]], labels: list[str], path: str | Path, cell: int = 96) -> Path:
    """One labelled row of images per entry (PIL only), each image scaled to ``cell`` px; writes a PNG."""
    from PIL import Image, ImageDraw

    label_width = 110
    columns = max((len(r) for r in rows), default=0)
    sheet = Image.new("RGB", (label_width + columns * (cell + 4), len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (row, label) in enumerate(zip(rows, labels)):
        top = i * (cell + 4)
        draw.text((6, top + cell // 2 - 6), label, fill="black")
        for j, image in enumerate(row):
            tile = image.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (label_width + j * (cell + 4), top))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
