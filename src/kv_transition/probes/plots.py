"""The novelty figures, drawn from the database alone (matplotlib Agg, no pyplot state).

- ``novelty_timeseries.png``: the primary metric per prompt and layer over the analysed
  positions, spikes marked, semantic transitions as vertical lines, surprise underneath.
- ``novelty_distribution.png``: z-scored values against a standard normal, as a histogram and
  as a log-scale survival function (heavy tails lie above the normal curve).
- ``spike_analysis.png``: autocorrelation to the maximum lag with the white-noise band,
  inter-spike intervals, burstiness per series.
- ``novelty_by_layer.png``: every geometric metric per layer (the per-layer comparison).
- ``novelty_vs_policy.png``: fraction of all vs high-novelty positions each policy keeps.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats as sps

from kv_transition.probes import db
from kv_transition.probes.db import ALL_HEADS, NOT_PER_LAYER
from kv_transition.probes.hypotheses import policy_links, units
from kv_transition.settings import PROBE_METRICS, ProbesConfig

NOVELTY_PLOTS = ("novelty_timeseries.png", "novelty_distribution.png", "spike_analysis.png",
                 "novelty_by_layer.png", "novelty_vs_policy.png")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#17becf")


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _segment(run: dict) -> slice:
    start, stop = run["meta"]["segment_range"]
    return slice(start, stop)


def _layer_colors(runs: list[dict]) -> dict[int, str]:
    layers = sorted({layer for r in runs for layer in r["meta"]["layers"]})
    return {layer: PALETTE[i % len(PALETTE)] for i, layer in enumerate(layers)}


def timeseries(conn, runs, stats_by_key, metric: str, path: Path) -> Path:
    fig = Figure(figsize=(10, 2.4 * len(runs) + 0.6))
    colors = _layer_colors(runs)
    for i, run in enumerate(runs):
        ax = fig.add_subplot(len(runs), 1, i + 1)
        seg = _segment(run)
        x = np.arange(seg.start, seg.stop)
        for layer in run["meta"]["layers"]:
            y = db.series(conn, run["novelty_run_id"], layer, ALL_HEADS, metric)[seg]
            ax.plot(x, y, color=colors[layer], lw=1.0, label=f"layer {layer}")
            spikes = stats_by_key[(run["novelty_run_id"], layer, ALL_HEADS, metric)]["spikes"]
            ax.plot(x[spikes], y[spikes], "v", color=colors[layer], ms=5)
        for row in db.token_rows(conn, run["novelty_run_id"]):
            if row["transition"] and seg.start <= row["position"] < seg.stop:
                ax.axvline(row["position"], color="0.6", lw=0.8, ls="--")
        surprise = db.series(conn, run["novelty_run_id"], NOT_PER_LAYER, NOT_PER_LAYER,
                             "surprise")[seg]
        twin = ax.twinx()
        twin.plot(x, surprise, color="0.45", lw=0.7, ls=":", label="surprise (nats)")
        twin.set_ylabel("surprise", fontsize=8, color="0.45")
        ax.set_title(f"{run['prompt_id']} — {metric} novelty, all selected heads "
                     "(▼ spikes, dashed: transitions)", fontsize=9)
        ax.set_ylabel(metric, fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
        ax.set_xlabel("position" if i == len(runs) - 1 else "")
    return _save(fig, path)


def _zscores(conn, runs, metric: str) -> dict[int, np.ndarray]:
    """Per layer, each series z-scored on its own segment, then pooled over prompts."""
    pooled: dict[int, list[np.ndarray]] = defaultdict(list)
    for run in runs:
        for layer in run["meta"]["layers"]:
            y = db.series(conn, run["novelty_run_id"], layer, ALL_HEADS, metric)[_segment(run)]
            y = y[np.isfinite(y)]
            if len(y) > 1 and y.std() > 0:
                pooled[layer].append((y - y.mean()) / y.std())
    return {layer: np.concatenate(parts) for layer, parts in pooled.items()}


def distribution(conn, runs, metric: str, path: Path) -> Path:
    fig = Figure(figsize=(10, 4))
    hist, tail = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    grid = np.linspace(-4, 6, 200)
    colors = _layer_colors(runs)
    for layer, z in sorted(_zscores(conn, runs, metric).items()):
        hist.hist(z, bins=30, density=True, histtype="step", color=colors[layer],
                  label=f"layer {layer} (n={len(z)})")
        zs = np.sort(z)
        tail.semilogy(zs, 1.0 - np.arange(len(zs)) / len(zs), color=colors[layer],
                      label=f"layer {layer}")
    hist.plot(grid, sps.norm.pdf(grid), color="black", lw=1, ls="--", label="normal")
    tail.semilogy(grid, sps.norm.sf(grid), color="black", lw=1, ls="--", label="normal")
    hist.set_title(f"{metric} novelty, z-scored per series", fontsize=9)
    hist.set_xlabel("z")
    tail.set_title("survival function P(Z ≥ z): heavy tails lie above the normal", fontsize=9)
    tail.set_xlabel("z")
    tail.set_ylim(1e-3, 1.1)
    for ax in (hist, tail):
        ax.legend(fontsize=7)
    return _save(fig, path)


def spike_analysis(rows: list[dict], path: Path) -> Path:
    fig = Figure(figsize=(12, 3.8))
    acf_ax, isi_ax, b_ax = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    acfs = [np.array(r["acf"], dtype=float) for r in rows if len(r["acf"]) > 1]
    if acfs:
        lags = max(len(a) for a in acfs)
        stack = np.full((len(acfs), lags), np.nan)
        for i, a in enumerate(acfs):
            stack[i, :len(a)] = a
        with np.errstate(all="ignore"):
            mean = np.nanmean(stack, axis=0)
        for a in acfs:
            acf_ax.plot(np.arange(len(a)), a, color="0.8", lw=0.6)
        acf_ax.plot(np.arange(lags), mean, color="black", lw=1.4, label="mean over series")
        band = np.nanmedian([r["acf_band"] for r in rows if r["acf_band"] is not None])
        acf_ax.axhspan(-band, band, color="#1f77b4", alpha=0.15, label="95% white-noise band")
        acf_ax.legend(fontsize=7)
    acf_ax.set_title("autocorrelation", fontsize=9)
    acf_ax.set_xlabel("lag")
    intervals = np.concatenate([np.diff(r["spikes"]) for r in rows if len(r["spikes"]) > 1]
                               or [np.empty(0)])
    if len(intervals):
        isi_ax.hist(intervals, bins=min(30, max(5, len(intervals) // 2)), color="#2ca02c")
    isi_ax.set_title(f"inter-spike intervals (n={len(intervals)})", fontsize=9)
    isi_ax.set_xlabel("positions between spikes")
    labels = [f"{r['prompt_id'][:14]}\nL{r['layer']}" for r in rows]
    values = [np.nan if r["burstiness"] is None else r["burstiness"] for r in rows]
    b_ax.bar(range(len(values)), np.nan_to_num(values), color=["#d62728" if v > 0 else "#1f77b4"
                                                                for v in np.nan_to_num(values)])
    b_ax.axhline(0, color="black", lw=0.8)
    b_ax.set_ylim(-1, 1)
    b_ax.set_xticks(range(len(labels)), labels, fontsize=6, rotation=90)
    b_ax.set_title("burstiness per series (blank: < 3 spikes)", fontsize=9)
    return _save(fig, path)


def by_layer(conn, runs, path: Path) -> Path:
    fig = Figure(figsize=(12, 3.6))
    layers = sorted({layer for r in runs for layer in r["meta"]["layers"]})
    for i, metric in enumerate(PROBE_METRICS):
        ax = fig.add_subplot(1, len(PROBE_METRICS), i + 1)
        data = []
        for layer in layers:
            parts = [db.series(conn, r["novelty_run_id"], layer, ALL_HEADS, metric)[_segment(r)]
                     for r in runs if layer in r["meta"]["layers"]]
            values = np.concatenate(parts) if parts else np.empty(0)
            data.append(values[np.isfinite(values)])
        ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=True,
                   flierprops={"markersize": 2})
        ax.set_xticks(range(1, len(layers) + 1), [str(layer) for layer in layers])
        ax.set_xlabel("layer")
        ax.set_title(metric, fontsize=9)
    fig.suptitle("novelty per layer (all selected heads, all prompts)", fontsize=10)
    return _save(fig, path)


def vs_policy(compression_rows: list[dict], metric: str, path: Path) -> Path:
    links = policy_links(compression_rows, metric)
    fig = Figure(figsize=(max(5.0, 1.1 * len(links) + 1.5), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(links))
    ax.bar(x - 0.2, [np.nan if lk.kept_all is None else lk.kept_all for lk in links], 0.4,
           label="all positions", color="0.6")
    ax.bar(x + 0.2, [np.nan if lk.kept_high is None else lk.kept_high for lk in links], 0.4,
           label="high-novelty positions", color="#d62728")
    ax.set_xticks(x, [f"{lk.policy}\n@{lk.budget:g}" for lk in links], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction kept")
    ax.set_title(f"what each policy keeps ({metric} novelty)", fontsize=9)
    ax.legend(fontsize=7)
    if not links:
        ax.text(0.5, 0.5, "no compressed policy in kv.policies × kv.budgets",
                ha="center", transform=ax.transAxes)
    return _save(fig, path)


def write_novelty_plots(conn: sqlite3.Connection, exp_group_id: str, out_dir: Path,
                        cfg: ProbesConfig) -> list[Path]:
    runs = db.complete_runs(conn, exp_group_id)
    if not runs:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stats_rows = db.stats_rows(conn, exp_group_id)
    by_key = {(r["novelty_run_id"], r["layer"], r["head"], r["metric"]): r for r in stats_rows}
    metric = cfg.primary_metric
    return [
        timeseries(conn, runs, by_key, metric, out_dir / NOVELTY_PLOTS[0]),
        distribution(conn, runs, metric, out_dir / NOVELTY_PLOTS[1]),
        spike_analysis(units(stats_rows, metric), out_dir / NOVELTY_PLOTS[2]),
        by_layer(conn, runs, out_dir / NOVELTY_PLOTS[3]),
        vs_policy(db.compression_rows(conn, exp_group_id), metric, out_dir / NOVELTY_PLOTS[4]),
    ]
