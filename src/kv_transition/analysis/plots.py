"""The analysis figures, drawn from bin_stats and telemetry with matplotlib's Agg backend.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas instead of pyplot, so no
global state or display is touched and the same database always draws the same picture.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kv_transition.analysis import queries
from kv_transition.analysis.aggregate import MIB, run_memory
from kv_transition.analysis.intervals import mean_interval
from kv_transition.kv.registry import budget_label, is_token_budget

PLOT_NAMES = ("acc_vs_len.png", "std_vs_len.png", "failrate_vs_len.png", "flip_vs_len.png",
              "latency_vs_len.png", "mem_vs_budget.png", "acc_vs_kv_memory.png")
# fixed palette, assigned to policies in sorted order; black is reserved for the full cache
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf", "#bcbd22", "#7f7f7f")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
LOG2_SPAN = 4.0  # lengths spanning more than 4x read better on a log2 axis
MAX_LABELLED_BINS = 12
DODGE = 0.012  # relative x offset between runs

Row = dict[str, Any]


def run_label(run: Row, many_datasets: bool = False) -> str:
    label = "full (1.0)" if queries.is_baseline(run) else \
        f"{run['kv_policy']} ({budget_label(float(run['kv_budget']))})"
    return f"{label} [{run['dataset_name']}]" if many_datasets else label


def _styles(runs: list[Row]) -> dict[int, Row]:
    """Colour by policy, line style and marker by budget rank: stable across reruns."""
    policies = sorted({r["kv_policy"] for r in runs if not queries.is_baseline(r)})
    budgets = sorted({float(r["kv_budget"]) for r in runs}, reverse=True)
    many = len({r["dataset_id"] for r in runs}) > 1
    styles = {}
    for run in runs:
        rank = budgets.index(float(run["kv_budget"]))
        base = queries.is_baseline(run)
        styles[run["run_id"]] = {
            "color": "black" if base else PALETTE[policies.index(run["kv_policy"]) % len(PALETTE)],
            "linestyle": "-" if base else LINESTYLES[rank % len(LINESTYLES)],
            "marker": "o" if base else MARKERS[rank % len(MARKERS)],
            "label": run_label(run, many),
        }
    return styles


def _num(x: Any) -> float:
    return np.nan if x is None else float(x)


def _midpoint(row: Row) -> float:
    if row["token_min"] is None or row["token_max"] is None:
        return float(row["bin_idx"])
    return (row["token_min"] + row["token_max"]) / 2.0


def _new_axes(title: str, xlabel: str, ylabel: str, ncols: int = 1):
    fig = Figure(figsize=(7.5 * ncols, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    # fixed margins instead of tight_layout: labels are short and fixed, and layout solving
    # would double the drawing time of every figure
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.12, top=0.86, wspace=0.25)
    fig.savefig(path, format="png")
    return path


def _length_axis(ax, xs: list[float]) -> None:
    finite = sorted({x for x in xs if x > 0})
    if finite and finite[-1] / finite[0] > LOG2_SPAN:
        ax.set_xscale("log", base=2)
    if 0 < len(finite) <= MAX_LABELLED_BINS:
        # tick at the bins themselves: readers want "800 tokens", not "2^9.6"
        ax.set_xticks(finite, [f"{x:g}" for x in finite])
        ax.minorticks_off()


def _length_plot(by_run: dict[int, list[Row]], styles: dict[int, Row], path: Path, title: str,
                 ylabel: str, draw: Callable[[Any, np.ndarray, list[Row], Row], None]) -> Path:
    fig, (ax,) = _new_axes(title, "context length (tokens, bin midpoint)", ylabel)
    xs_all: list[float] = []
    for k, (run_id, style) in enumerate(styles.items()):
        rows = by_run.get(run_id, [])
        if not rows:
            continue
        xs = np.array([_midpoint(r) for r in rows])
        xs_all += list(xs)
        # nudge each run sideways a little so error bars at the same bin do not hide each other
        draw(ax, xs * (1 + DODGE * (k - (len(styles) - 1) / 2)), rows, style)
    _length_axis(ax, xs_all)
    if xs_all:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def _line(key: str):
    def draw(ax, xs, rows, style):
        ax.plot(xs, [_num(r[key]) for r in rows], **style)
    return draw


def _acc_with_ci(ax, xs, rows, style):
    mean = np.array([_num(r["acc_mean"]) for r in rows])
    low = np.array([_num(r["acc_ci_low"]) for r in rows])
    high = np.array([_num(r["acc_ci_high"]) for r in rows])
    yerr = np.nan_to_num(np.vstack([mean - low, high - mean]))
    ax.errorbar(xs, mean, yerr=yerr, capsize=3, **style)
    ax.set_ylim(-0.03, 1.03)


def _latency(ax, xs, rows, style):
    p50 = np.array([_num(r["lat_p50"]) for r in rows])
    p95 = np.array([_num(r["lat_p95"]) for r in rows])
    # the whisker reaches up to p95: the tail, drawn without hiding the median line
    yerr = np.nan_to_num(np.vstack([np.zeros_like(p50), p95 - p50]))
    ax.errorbar(xs, p50, yerr=yerr, capsize=4, **style)


def scope_label(scopes: set[str]) -> str:
    if not scopes:
        return "not measured"
    return next(iter(scopes)) if len(scopes) == 1 else "mixed: " + ", ".join(sorted(scopes))


def _budget_panel(ax, runs: list[Row], styles: dict[int, Row], values: dict[int, float]) -> None:
    """One line per policy over budgets; the full-cache baseline as a single black star."""
    by_policy: dict[str, list[Row]] = defaultdict(list)
    for run in runs:
        # the x axis is the fraction kept; budgets in tokens are on the measured-memory plots
        if not is_token_budget(float(run["kv_budget"])):
            by_policy[run["kv_policy"]].append(run)
    drawn = False
    for policy in sorted(by_policy):
        pts = sorted(by_policy[policy], key=lambda r: float(r["kv_budget"]))
        xs = [float(r["kv_budget"]) for r in pts]
        ys = [values.get(r["run_id"], np.nan) for r in pts]
        if all(np.isnan(ys)):
            continue
        drawn = True
        style = styles[pts[0]["run_id"]]
        if policy == queries.BASELINE_POLICY:
            ax.plot(xs, ys, color="black", marker="*", markersize=12, linestyle="none",
                    label="full (1.0)")
        else:
            ax.plot(xs, ys, color=style["color"], marker="o", label=policy)
    if drawn:
        ax.set_ylim(bottom=0)  # from zero, so the gap to the baseline reads as a proportion
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not measured", ha="center", transform=ax.transAxes)


def _memory_plot(conn: sqlite3.Connection, exp_group_id: str, runs: list[Row],
                 styles: dict[int, Row], path: Path) -> Path:
    mem = run_memory(conn, exp_group_id)
    fig, (ax_kv, ax_peak) = _new_axes(f"Memory vs KV budget — {exp_group_id}",
                                      "KV budget (fraction of full cache)",
                                      "measured KV cache per request (MiB, mean)", ncols=2)
    _budget_panel(ax_kv, runs, styles, {i: _num(m["kv_mib"]) for i, m in mem.items()})
    ax_kv.set_title("measured KV bytes")
    _budget_panel(ax_peak, runs, styles, {i: _num(m["peak_p95"]) for i, m in mem.items()})
    scope = scope_label(set().union(*(m["scopes"] for m in mem.values())) if mem else set())
    ax_peak.set_title(f"peak memory p95 (scope: {scope})")
    ax_peak.set_ylabel("peak memory p95 (MB, as recorded)")
    return _save(fig, path)


def _acc_memory_points(conn: sqlite3.Connection, exp_group_id: str) -> dict[int, Row]:
    """Per run: mean accuracy with a 95% interval (intervals.mean_interval, clustered by
    context), and mean measured KV MiB per request."""
    acc, kv, clusters = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in queries.request_rows(conn, exp_group_id):
        acc[r["run_id"]].append(0.0 if r["acc"] is None else float(r["acc"]))
        clusters[r["run_id"]].append(r["cluster"])
        if r["kv_bytes"] is not None:
            kv[r["run_id"]].append(r["kv_bytes"] / MIB)
    points = {}
    for run_id in set(acc) & set(kv):
        ci = mean_interval(acc[run_id], clusters[run_id], 0.95, 1000, [run_id])
        points[run_id] = {"kv": float(np.mean(kv[run_id])), "acc": float(np.mean(acc[run_id])),
                          "low": ci.low, "high": ci.high}
    return points


def _acc_memory_plot(conn: sqlite3.Connection, exp_group_id: str, runs: list[Row],
                     styles: dict[int, Row], path: Path) -> Path:
    """Every policy, eviction and quantization alike, on one axis: the KV bytes really held
    (codes + scales + zero-points + full-precision residual), not the nominal budget."""
    points = _acc_memory_points(conn, exp_group_id)
    fig, (ax,) = _new_axes(f"Accuracy vs measured KV memory — {exp_group_id}",
                           "measured KV cache per request (MiB, mean): true bytes, incl. "
                           "scales, zero-points, residual", "accuracy (mean, 95% interval)")
    by_policy: dict[str, list[Row]] = defaultdict(list)
    for run in runs:
        if run["run_id"] in points:
            by_policy[run["kv_policy"]].append(run)
    for policy in sorted(by_policy):
        pts = sorted(by_policy[policy], key=lambda r: points[r["run_id"]]["kv"])
        xs = [points[r["run_id"]]["kv"] for r in pts]
        ys = np.array([points[r["run_id"]]["acc"] for r in pts])
        err = np.nan_to_num(np.vstack([ys - [points[r["run_id"]]["low"] for r in pts],
                                       [points[r["run_id"]]["high"] for r in pts] - ys]))
        base = policy == queries.BASELINE_POLICY
        ax.errorbar(xs, ys, yerr=err, capsize=3, color="black" if base else
                    styles[pts[0]["run_id"]]["color"], marker="*" if base else "o",
                    markersize=12 if base else 6, linestyle="none" if base else "-",
                    label="full (1.0)" if base else policy)
        labels: dict[tuple[float, float], list[str]] = defaultdict(list)
        for x, y, r in zip(xs, ys, pts):  # the budget next to where the bytes really landed
            labels[(x, y)].append(budget_label(float(r["kv_budget"])))
        for (x, y), texts in labels.items():
            ax.annotate(", ".join(texts), (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)
    if points:
        ax.set_xlim(left=0)
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "KV bytes not measured", ha="center", transform=ax.transAxes)
    return _save(fig, path)


def write_plots(conn: sqlite3.Connection, exp_group_id: str, plots_dir: Path) -> list[Path]:
    """Draw every analysis figure into ``plots_dir``; returns their paths in PLOT_NAMES order."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    runs = queries.runs_of_group(conn, exp_group_id)
    styles = _styles(runs)
    by_run: dict[int, list[Row]] = defaultdict(list)
    for row in queries.bin_stats_rows(conn, exp_group_id):
        by_run[row["run_id"]].append(row)
    length_plots = [
        ("acc_vs_len.png", "Accuracy vs context length", "accuracy (mean, 95% interval)",
         _acc_with_ci),
        ("std_vs_len.png", "Accuracy spread vs context length",
         "accuracy std across examples (sample)", _line("acc_std")),
        ("failrate_vs_len.png", "Failure rate vs context length",
         "failure rate (fraction of requests)", _line("fail_rate")),
        ("flip_vs_len.png", "Answer flips vs full cache, by context length",
         "flip rate (fraction of paired entries)", _line("flip_rate")),
        ("latency_vs_len.png", "Latency vs context length",
         "latency per request (s): p50, whisker to p95", _latency),
    ]
    paths = [_length_plot(by_run, styles, plots_dir / name, f"{title} — {exp_group_id}",
                          ylabel, draw) for name, title, ylabel, draw in length_plots]
    paths.append(_memory_plot(conn, exp_group_id, runs, styles, plots_dir / "mem_vs_budget.png"))
    paths.append(_acc_memory_plot(conn, exp_group_id, runs, styles,
                                  plots_dir / "acc_vs_kv_memory.png"))
    return sorted(paths, key=lambda p: PLOT_NAMES.index(p.name))
