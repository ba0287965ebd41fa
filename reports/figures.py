"""Report figures: one matplotlib style, journal column widths, deterministic files.

Every figure is a :class:`matplotlib.figure.Figure` built without pyplot (no global
state), drawn under :data:`STYLE`, and saved by :func:`save_figure` as PDF, SVG and PNG
with fixed metadata and a fixed SVG hash salt, so the same run gives byte-identical
files. Nothing here computes a score: values come from scores.csv, voxels.csv.gz and
report_data/ as they are.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.rundir import ALL, RunData

#: single journal column and full page width, inches
COLUMN_WIDTH_IN = 3.5
PAGE_WIDTH_IN = 7.16
#: resolution of the PNG files and of the figures embedded in index.html
PNG_DPI = 200

#: the one style of every figure (applied with matplotlib.rc_context)
STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 7.0,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7.0,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "legend.frameon": False,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "savefig.dpi": PNG_DPI,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
    "svg.hashsalt": "xscale-report",
    "svg.fonttype": "path",
    "pdf.fonttype": 42,
    "path.simplify": False,
}

#: colour-blind safe palette (Okabe & Ito), one colour per model in run order
PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#F0E442",
)

_METADATA = {
    "pdf": {"Creator": "xscale", "Producer": "xscale", "CreationDate": None, "ModDate": None},
    "svg": {"Creator": "xscale", "Date": None},
    "png": {"Software": "xscale"},
}

#: axis labels of well-known condition columns of cases.csv
CONDITION_LABELS = {
    "crossing_angle_deg": "Crossing angle (deg)",
    "snr": "SNR",
    "kappa": "Dispersion (Watson kappa; larger = less dispersed)",
    "dispersion_deg": "Dispersion (deg)",
    "dispersion": "Dispersion",
    "odi": "Orientation dispersion index",
    "b_value": "b-value (s/mm$^2$)",
}

#: order in which condition sweeps are shown
_CONDITION_ORDER = ("crossing_angle_deg", "snr", "kappa", "dispersion_deg", "dispersion", "odi")
#: numeric cases.csv columns that are not conditions to plot against
_NOT_CONDITIONS = {"case", "seed"}


@dataclass(frozen=True)
class FigureFile:
    """A figure written to report/figures/.

    Attributes
    ----------
    stem : str
        File name without extension (``stem.pdf``, ``stem.svg``, ``stem.png``).
    title : str
        Heading in the report.
    caption : str
        What is plotted: metric, statistic, uncertainty.
    png : bytes
        The PNG file's bytes (embedded in index.html).
    """

    stem: str
    title: str
    caption: str
    png: bytes


@contextmanager
def report_style() -> Iterator[None]:
    """Apply :data:`STYLE` (and the Agg backend's defaults) inside a ``with`` block."""
    with matplotlib.rc_context(STYLE):  # type: ignore[arg-type]
        yield


def new_figure(width_in: float, height_in: float) -> Figure:
    """A constrained-layout figure of the given size in inches, not registered with pyplot."""
    return Figure(figsize=(width_in, height_in), layout="constrained")


def save_figure(fig: Figure, folder: Path, stem: str) -> bytes:
    """Write ``fig`` as ``folder/stem.{pdf,svg,png}`` deterministically.

    Parameters
    ----------
    fig : Figure
    folder : Path
        Existing folder.
    stem : str
        File name without extension.

    Returns
    -------
    bytes
        The PNG file's content.
    """
    png = b""
    # fontTools logs every glyph subset at INFO level while the PDF embeds its fonts
    font_log = logging.getLogger("fontTools")
    level = font_log.level
    font_log.setLevel(max(level, logging.WARNING))
    try:
        for fmt in ("pdf", "svg", "png"):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, metadata=_METADATA[fmt], dpi=PNG_DPI)
            data = buffer.getvalue()
            (folder / f"{stem}.{fmt}").write_bytes(data)
            if fmt == "png":
                png = data
    finally:
        font_log.setLevel(level)
    return png


def mpl_text(text: str, limit: int = 40) -> str:
    """User text made safe for matplotlib: no mathtext, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


def model_colours(labels: Sequence[str]) -> dict[str, str]:
    """One palette colour per model label, in run order."""
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def metric_label(run: RunData, metric: str) -> str:
    """Axis label of a metric: name and unit."""
    unit = run.unit(metric)
    return f"{metric} ({unit})" if unit else metric


# --------------------------------------------------------------------------- main scores
def main_scores_figure(run: RunData, metrics: Sequence[str]) -> Figure | None:
    """Dot plot of each main metric's median with its 95% CI per model (case=all,
    region=all), one panel per metric; None when there is nothing to plot."""
    rows = run.scores[
        (run.scores["case"] == ALL)
        & (run.scores["region"] == ALL)
        & (run.scores["statistic"] == "median")
    ]
    if not metrics or rows.empty:
        return None
    labels = run.labels
    colours = model_colours(labels)
    ncols = min(len(metrics), 3)
    nrows = int(np.ceil(len(metrics) / ncols))
    height = max(1.0, 0.22 * len(labels) + 0.7) * nrows
    fig = new_figure(PAGE_WIDTH_IN, height)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    y = np.arange(len(labels))[::-1]
    for ax, metric in zip(axes, metrics, strict=False):
        sub = rows[rows["metric"] == metric].set_index("model")
        for yi, label in zip(y, labels, strict=True):
            if label not in sub.index:
                continue
            r = sub.loc[label]
            value, lo, hi = float(r["value"]), float(r["ci_low"]), float(r["ci_high"])
            if np.isfinite(value):
                if np.isfinite(lo) and np.isfinite(hi):
                    ax.plot([lo, hi], [yi, yi], color=colours[label], lw=1.6, alpha=0.6)
                ax.plot([value], [yi], "o", color=colours[label])
            else:
                ax.text(0.02, yi, "undefined", transform=ax.get_yaxis_transform(), va="center",
                        fontsize=6, color="0.4")
        ax.set_yticks(y, [mpl_text(run.display_name(label), 24) for label in labels])
        ax.set_ylim(-0.7, len(labels) - 0.3)
        arrow = "higher is better" if run.higher_is_better(metric) else "lower is better"
        ax.set_xlabel(f"{metric_label(run, metric)}\nmedian, {arrow}")
        ax.grid(axis="x", color="0.9", lw=0.5)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return fig


# --------------------------------------------------------------------- condition sweeps
def sweep_conditions(cases: pd.DataFrame | None) -> list[str]:
    """Numeric condition columns of cases.csv taking two or more finite values, in the
    order crossing angle, SNR, dispersion, then the rest alphabetically."""
    if cases is None or len(cases) < 2:
        return []
    found = []
    for col in cases.columns:
        if col in _NOT_CONDITIONS:
            continue
        values = pd.to_numeric(cases[col], errors="coerce")
        if values.notna().sum() >= 2 and values[np.isfinite(values)].nunique() >= 2:
            found.append(col)
    known = [c for c in _CONDITION_ORDER if c in found]
    return known + sorted(c for c in found if c not in known)


def sweep_cases(
    cases: pd.DataFrame, condition: str
) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    """Cases of a sweep over ``condition``.

    Every other varying condition is held at its most common value (ties: the smallest),
    so that the plotted cases differ in ``condition`` only.

    Returns
    -------
    cases : pandas.DataFrame
        The cases, sorted by the condition (as float, column ``_x``), finite values only.
    fixed : dict
        The held conditions and their values.
    left_out : list of str
        Cases of the sweep left out because the condition is not finite (e.g. SNR inf,
        the noise-free case).
    """
    fixed: dict[str, Any] = {}
    subset = cases
    for col in cases.columns:
        if col in _NOT_CONDITIONS or col == condition or cases[col].nunique(dropna=False) < 2:
            continue
        counts = subset[col].value_counts(dropna=True)
        if counts.empty:
            continue
        top = counts[counts == counts.max()].index
        value = sorted(top, key=lambda v: (str(type(v)), v))[0]
        fixed[col] = value
        subset = subset[subset[col] == value]
    x = pd.to_numeric(subset[condition], errors="coerce").astype(float)
    finite = np.isfinite(x.to_numpy())
    left_out = [str(c) for c in subset.loc[~finite, "case"]]
    subset = subset.assign(_x=x)[finite].sort_values("_x", kind="stable")
    return subset, fixed, left_out


def sweep_figure(
    run: RunData, condition: str, metrics: Sequence[str]
) -> tuple[Figure, dict[str, Any], list[str]] | None:
    """Median of each metric against a case condition, one line per model with its 95%
    CI as a band (region=all); logarithmic x when the values span more than a factor 20.

    Returns the figure, the conditions held fixed and the cases left out (see
    :func:`sweep_cases`), or None when fewer than two cases have scores.
    """
    if run.cases is None:
        return None
    subset, fixed, left_out = sweep_cases(run.cases, condition)
    if len(subset) < 2 or not metrics:
        return None
    med = run.scores[
        (run.scores["region"] == ALL)
        & (run.scores["statistic"] == "median")
        & (run.scores["case"].isin(subset["case"]))
    ]
    if med.empty:
        return None
    colours = model_colours(run.labels)
    fig = new_figure(PAGE_WIDTH_IN if len(metrics) > 1 else COLUMN_WIDTH_IN, 2.3)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
    xs = subset.set_index("case")["_x"]
    log_x = bool(xs.min() > 0 and xs.max() / xs.min() > 20)
    for ax, metric in zip(axes, metrics, strict=True):
        sub = med[med["metric"] == metric]
        for label in run.labels:
            rows = sub[sub["model"] == label].set_index("case")
            cases = [c for c in subset["case"] if c in rows.index]
            if not cases:
                continue
            x = xs.loc[cases].to_numpy(float)
            value = rows.loc[cases, "value"].to_numpy(float)
            lo = rows.loc[cases, "ci_low"].to_numpy(float)
            hi = rows.loc[cases, "ci_high"].to_numpy(float)
            if not np.isfinite(value).any():
                continue
            colour = colours[label]
            ax.fill_between(x, lo, hi, color=colour, alpha=0.18, lw=0)
            ax.plot(x, value, "o-", color=colour, label=mpl_text(run.display_name(label), 34))
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(mpl_text(CONDITION_LABELS.get(condition, condition), 60))
        ax.set_ylabel(f"{metric_label(run, metric)}\nmedian")
        ax.grid(color="0.92", lw=0.5)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 4))
    return fig, fixed, left_out


# ----------------------------------------------------------------------- distributions
def distribution_figure(
    run: RunData, voxels: pd.DataFrame, metrics: Sequence[str]
) -> Figure | None:
    """Box plots of per-voxel values of each metric per model (all cases and regions;
    undefined voxels left out); None when no metric has values."""
    metrics = [m for m in metrics if m in voxels.columns]
    if not metrics or "model" not in voxels.columns:
        return None
    labels = run.labels
    colours = model_colours(labels)
    fig = new_figure(PAGE_WIDTH_IN if len(metrics) > 1 else COLUMN_WIDTH_IN, 2.2)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)).ravel()
    model_col = voxels["model"].astype(str)
    plotted = False
    for ax, metric in zip(axes, metrics, strict=True):
        values = pd.to_numeric(voxels[metric], errors="coerce").to_numpy(float)
        data, names, cols = [], [], []
        for label in labels:
            v = values[(model_col == label).to_numpy()]
            v = v[np.isfinite(v)]
            data.append(v if v.size else np.array([np.nan]))
            names.append(mpl_text(run.display_name(label), 18))
            cols.append(colours[label])
            plotted = plotted or v.size > 0
        parts = ax.boxplot(data, patch_artist=True, widths=0.6, showfliers=True,
                           flierprops={"markersize": 1.5, "alpha": 0.5})
        for patch, colour in zip(parts["boxes"], cols, strict=True):
            patch.set_facecolor(colour)
            patch.set_alpha(0.45)
        for median in parts["medians"]:
            median.set_color("black")
        ax.set_xticks(np.arange(1, len(names) + 1), names, rotation=25, ha="right")
        ax.set_ylabel(f"{metric_label(run, metric)}\nper voxel")
        ax.grid(axis="y", color="0.92", lw=0.5)
    return fig if plotted else None


# ---------------------------------------------------------------------------- glyphs
def _sources(keys: Sequence[str], prefix: str, labels: Sequence[str]) -> list[str]:
    """Source names of ``prefix<source>`` arrays: truth, microscopy, models, others."""
    names = [k[len(prefix) :] for k in keys if k.startswith(prefix)]
    order = list(dict.fromkeys(["truth", "microscopy", *labels]))  # labels may hold microscopy
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def _source_title(run: RunData, source: str) -> str:
    if source == "truth":
        return "ground truth"
    if source == "microscopy":
        return "microscopy"
    return mpl_text(run.display_name(source), 22)


def glyph_figure(run: RunData, data: Any, *, max_voxels: int = 4) -> Figure | None:
    """ODF glyphs of the chosen voxels (rows) for each source (columns: truth,
    microscopy, each model), radius = ODF / max ODF of that glyph, colour = direction
    (|x|, |y|, |z|), seen along the third array axis."""
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    keys = list(data.keys())
    if "sphere_vertices" not in keys or "sphere_faces" not in keys:
        return None
    vertices = np.asarray(data["sphere_vertices"], dtype=np.float64)
    faces = np.asarray(data["sphere_faces"], dtype=np.intp)
    sources = _sources(keys, "odf_", run.labels)
    if not sources or vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2:
        return None
    voxels = np.asarray(data["voxels"]) if "voxels" in keys else None
    n_vox = min(int(np.asarray(data[f"odf_{sources[0]}"]).shape[0]), max_voxels)
    if n_vox == 0:
        return None
    face_dirs = np.abs(vertices[faces].mean(axis=1))
    face_colours = face_dirs / np.maximum(face_dirs.max(axis=1, keepdims=True), 1e-12)
    cell = min(1.2, PAGE_WIDTH_IN / len(sources))
    fig = Figure(figsize=(cell * len(sources), cell * n_vox + 0.3), layout="constrained")
    for row in range(n_vox):
        for col, source in enumerate(sources):
            ax: Any = fig.add_subplot(n_vox, len(sources), row * len(sources) + col + 1,
                                      projection="3d")
            ax.set_axis_off()
            ax.view_init(elev=90, azim=-90)
            ax.set_box_aspect((1, 1, 1))
            if row == 0:
                ax.set_title(_source_title(run, source), fontsize=6.5)
            if col == 0 and voxels is not None and row < len(voxels):
                ijk = ", ".join(str(int(v)) for v in voxels[row])
                ax.text2D(-0.05, 0.5, f"({ijk})", transform=ax.transAxes, rotation=90,
                          ha="right", va="center", fontsize=6)
            odf = np.asarray(data[f"odf_{source}"], dtype=np.float64)
            if odf.ndim == 2 and row < odf.shape[0] and odf.shape[1] == len(vertices):
                values = odf[row]
            else:
                values = np.full(len(vertices), np.nan)
            peak = float(np.nanmax(values)) if np.isfinite(values).any() else 0.0
            if not peak > 0:
                ax.text2D(0.5, 0.5, "no ODF", transform=ax.transAxes, ha="center",
                          va="center", fontsize=6, color="0.4")
                continue
            # negative lobes of an SH series are clipped: the glyph shows where fibres are
            radius = np.clip(np.nan_to_num(values / peak), 0.0, None)
            points = vertices * radius[:, None]
            poly = Poly3DCollection(points[faces], facecolors=face_colours, edgecolors="none",
                                    linewidths=0)
            poly.set_rasterized(True)
            ax.add_collection3d(poly)
            for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
                setter(-1, 1)
    return fig


# -------------------------------------------------------------------------- DEC maps
def dec_figure(run: RunData, data: Any) -> Figure | None:
    """Direction-encoded colour maps of one slice, one panel per source side by side
    (array RGB in [0, 1] as written; first in-plane axis horizontal)."""
    keys = list(data.keys())
    sources = _sources(keys, "dec_", run.labels)
    if not sources:
        return None
    width = min(PAGE_WIDTH_IN, 1.6 * len(sources))
    first = np.asarray(data[f"dec_{sources[0]}"])
    if first.ndim != 3 or first.shape[2] != 3:
        return None
    aspect = first.shape[1] / max(first.shape[0], 1)
    height = max(1.0, min(3.0, width / len(sources) * aspect)) + 0.35
    fig = new_figure(width, height)
    axes = np.atleast_1d(fig.subplots(1, len(sources), squeeze=False)).ravel()
    for ax, source in zip(axes, sources, strict=True):
        rgb = np.asarray(data[f"dec_{source}"], dtype=np.float64)
        ax.set_title(_source_title(run, source), fontsize=6.5)
        ax.set_axis_off()
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            continue
        rgb = np.clip(np.nan_to_num(rgb), 0.0, 1.0)
        ax.imshow(np.transpose(rgb, (1, 0, 2)), origin="lower", interpolation="nearest")
    return fig


# ---------------------------------------------------------------------- tractography
def tract_figure(run: RunData, data: Any) -> Figure | None:
    """Streamline density projections of each model over the ground-truth bundles.

    ``data`` holds ``truth_<bundle>`` (A, B) projections of the ground-truth bundle masks
    (values in [0, 1]) and ``density_<label>`` (A, B) non-negative streamline densities
    projected along ``projection_axis``. One panel per model: bundles as grey areas with
    an outline, the density (scaled to its maximum) in colour on top.
    """
    keys = list(data.keys())
    truths = sorted(k for k in keys if k.startswith("truth_"))
    sources = _sources(keys, "density_", run.labels)
    if not sources:
        return None
    first = np.asarray(data[f"density_{sources[0]}"], dtype=np.float64)
    if first.ndim != 2:
        return None
    shape = first.shape
    truth = np.zeros(shape)
    masks = []
    for key in truths:
        arr = np.asarray(data[key], dtype=np.float64)
        if arr.shape == shape:
            arr = np.clip(np.nan_to_num(arr), 0.0, 1.0)
            truth = np.maximum(truth, arr)
            masks.append(arr)
    width = min(PAGE_WIDTH_IN, 1.6 * len(sources))
    aspect = shape[1] / max(shape[0], 1)
    height = max(1.0, min(3.0, width / len(sources) * aspect)) + 0.35
    fig = new_figure(width, height)
    axes = np.atleast_1d(fig.subplots(1, len(sources), squeeze=False)).ravel()
    for ax, source in zip(axes, sources, strict=True):
        ax.set_title(_source_title(run, source), fontsize=6.5)
        ax.set_axis_off()
        ax.imshow(truth.T, origin="lower", cmap="Greys", vmin=0.0, vmax=2.5,
                  interpolation="nearest")
        for mask in masks:
            if mask.max() > 0.5 and mask.min() < 0.5:
                ax.contour(mask.T, levels=[0.5], colors="0.35", linewidths=0.5)
        density = np.asarray(data[f"density_{source}"], dtype=np.float64)
        if density.shape != shape:
            continue
        density = np.clip(np.nan_to_num(density), 0.0, None)
        top = density.max()
        if top > 0:
            shown = np.ma.masked_less_equal(density / top, 0.0)
            ax.imshow(shown.T, origin="lower", cmap="magma_r", vmin=0.0, vmax=1.0, alpha=0.75,
                      interpolation="nearest")
    return fig
