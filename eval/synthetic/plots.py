"""PNG plots of the synthetic suites (matplotlib's Agg canvas; pyplot is never touched, so no
display and no global state): accuracy vs context length, and the needle depth x length
heatmap."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

__all__ = ["accuracy_by_length", "needle_heatmap"]


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def accuracy_by_length(by_length: Mapping[str, float | None], path: str | Path, *,
                       title: str = "", ylabel: str = "accuracy (%)",
                       chance: float | None = None) -> Path:
    """Line plot of ``{str(length): score %}`` (log2 x axis when lengths span > 4x)."""
    pts = sorted((int(k), v) for k, v in by_length.items() if v is not None)
    fig = _figure((5.5, 3.6))
    ax = fig.add_subplot()
    if pts:
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o")
        if max(xs) > 4 * min(xs):
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="best")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def needle_heatmap(grid: Mapping[str, Mapping[str, float | None]], path: str | Path, *,
                   title: str = "") -> Path:
    """``grid[str(depth)][str(length)]`` -> heatmap: depth (%) on y (0 at the top), length on
    x, accuracy as colour (red 0 .. green 100), each cell annotated (blank: not run)."""
    import numpy as np
    depths = sorted(grid, key=float)
    lengths = sorted({k for row in grid.values() for k in row}, key=int)
    a = np.array([[np.nan if grid[d].get(L) is None else grid[d][L] for L in lengths]
                  for d in depths], dtype=float)
    fig = _figure((max(4.0, 1.6 + 0.9 * len(lengths)), max(3.0, 1.0 + 0.5 * len(depths))))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(a), cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    ax.set_title(title)
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not np.isnan(a[i, j]):
                ax.text(j, i, f"{a[i, j]:.0f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, label="accuracy (%)")
    return _save(fig, path)
