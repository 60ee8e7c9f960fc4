"""Draw a compatibility matrix (``metrics["compatibility"]`` of a result, see :mod:`cl.core.compatibility`)
as a heatmap: row i = query model after experience i, column j = gallery model after experience j; cells
above the diagonal are blank; a cell whose pair fails the empirical compatibility criterion
(``C[i][j] < C[j][j]``) is outlined.

    from cl.sweeps.compat_plot import plot_compatibility
    plot_compatibility(result["metrics"]["compatibility"], "compat.png", title="cl2r seed 0")

``plot_compatibility_mean`` averages the matrices of several runs (seeds) cell by cell first.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _array(C) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in C], dtype=float)


def plot_compatibility(C, path: str | Path | None = None, title: str | None = None, ax=None, percent: bool = True):
    """Heatmap of C (nested lists, None above the diagonal); writes ``path`` if given; returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = _array(C) * (100.0 if percent else 1.0)
    T = len(a)
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.7 * T, 0.8 + 0.6 * T))
    im = ax.imshow(np.ma.masked_invalid(a), cmap="viridis", vmin=np.nanmin(a) if T else 0, vmax=np.nanmax(a) if T else 1)
    for i in range(T):
        for j in range(i + 1):
            ax.text(j, i, f"{a[i, j]:.1f}" if percent else f"{a[i, j]:.3f}", ha="center", va="center",
                    color="white", fontsize=8)
            if j < i and a[i, j] < a[j, j]:  # fails the empirical compatibility criterion
                ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    ax.set_xticks(range(T), [str(j + 1) for j in range(T)])
    ax.set_yticks(range(T), [str(i + 1) for i in range(T)])
    ax.set_xlabel("gallery model (after experience)")
    ax.set_ylabel("query model (after experience)")
    if title:
        ax.set_title(title)
    fig = fig or ax.figure
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="retrieval accuracy" + (" (%)" if percent else ""))
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def mean_matrix(matrices) -> list[list]:
    """Cell-wise mean of several compatibility matrices of the same size (None stays None)."""
    import warnings

    with warnings.catch_warnings():  # cells above the diagonal are NaN in every matrix
        warnings.simplefilter("ignore", RuntimeWarning)
        a = np.nanmean(np.stack([_array(C) for C in matrices]), axis=0)
    return [[None if np.isnan(v) else float(v) for v in row] for row in a]


def plot_compatibility_mean(matrices, path=None, title=None):
    return plot_compatibility(mean_matrix(matrices), path, title)
