"""``runs/<exp>/novelty/novelty_report.md`` and the short section the main report includes.

Every number comes from the novelty tables; the verdict rules live in ``hypotheses``.
"""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from statistics import median
from typing import Any

from kv_transition.probes import db
from kv_transition.probes.hypotheses import link_words, policy_links, units, verdicts
from kv_transition.probes.plots import NOVELTY_PLOTS
from kv_transition.settings import PROBE_METRICS, ProbesConfig

RANDOM_MODEL_PREFIX = "builtin:tiny-random"
REPORT_NAME = "novelty_report.md"
RANDOM_WARNING = (
    "> **Warning:** the model is a random-weight test model (`builtin:tiny-random`). Novelty "
    "findings on a random model mean nothing about real models: this report only shows that "
    "capture, metrics and the policy link work end to end.")
CAPTIONS = {
    "novelty_timeseries.png": "Novelty over the analysed positions per prompt and layer",
    "novelty_distribution.png": "Distribution of z-scored novelty against a normal",
    "spike_analysis.png": "Autocorrelation, inter-spike intervals, burstiness",
    "novelty_by_layer.png": "Per-layer comparison of every geometric metric",
    "novelty_vs_policy.png": "Fraction of all vs high-novelty positions each policy keeps",
}
DEFINITIONS = (
    "Geometric novelty of position t compares its vector (a KV head's key, or a layer's selected "
    "heads concatenated) with the w positions before it: cosine novelty 1 − cos(x_t, mean), L2 "
    "novelty ‖x_t − mean‖, projection residual (share of ‖x_t‖ outside the subspace holding "
    "the configured energy fraction of the window), Mahalanobis distance under the window's "
    "shrunk covariance (diagonal above the configured dimension).",
    "Predictive: surprise −log p(token) and entropy of the model's distribution at the step "
    "that produced the token (temperature 1), entropy gradient H_t − H_{t−1}.",
    "Spikes: values above mean + k·std of the series, runs closer than the merge distance "
    "counted once. Burstiness (σ − μ)/(σ + μ) of inter-spike intervals: −1 periodic, 0 "
    "Poisson, → 1 bursty. Uniformity: Kolmogorov–Smirnov test of spike positions.",
    "Semantic transitions: the first token of a line after a blank line, or of a line whose "
    "class (prose, code, code fence) differs from the previous line's (a heuristic).",
    "Policy link: the whole sequence (prompt + generated tokens) is prefilled under the real "
    "kvpress press, as if the cache were compressed at the end of generation; kept positions "
    "are read back from the compressed cache, the score is the press's own. High-novelty "
    "positions are those above the configured quantile of the analysed positions.",
)

Row = dict[str, Any]


def _f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or not math.isfinite(float(x)) else f"{float(x):.{digits}f}"


def _is_random(runs: list[Row]) -> bool:
    return any(r["model_name"].startswith(RANDOM_MODEL_PREFIX) for r in runs)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _setup(runs: list[Row], cfg: ProbesConfig) -> list[str]:
    first = runs[0]
    meta = first["meta"]
    rows = [
        ["model", first["model_name"]], ["target", first["target"]],
        ["layers", ", ".join(map(str, meta["layers"]))],
        ["KV heads", "—" if meta["heads"] is None else ", ".join(map(str, meta["heads"]))],
        ["prompts", ", ".join(r["prompt_id"] for r in runs)],
        ["analysed positions", meta["segment"]],
        ["tokens (prompt / generated)", ", ".join(f"{r['n_prompt_tokens']}/{r['n_generated']}"
                                                  for r in runs)],
        ["temperature / seed", f"{first['temperature']:g} / {cfg.seed} + the prompt's place "
         "in the suite"],
        ["windows (cos/L2/proj, Mahalanobis)", f"{cfg.window}, {cfg.mahalanobis_window}"],
        ["spike rule", f"mean + {cfg.spike_k:g}·std, merge ≤ {cfg.spike_merge} positions"],
        ["primary metric", cfg.primary_metric], ["tensors stored", first["store"]],
    ]
    return _table(["item", "value"], rows)


def _per_series(stats_rows: list[Row], metric: str) -> list[str]:
    rows = []
    for r in units(stats_rows, metric):
        near = "—" if r["transition_hits"] is None else \
            f"{r['transition_hits']} ({_f(r['transition_expected'], 1)})"
        rows.append([r["prompt_id"], r["layer"], r["n"], _f(r["mean"], 3), _f(r["kurtosis"]),
                     _f(r["skew"]), r["n_spikes"], _f(r["burstiness"]),
                     f"{_f(r['acf_lag1'])} (±{_f(r['acf_band'])})", _f(r["uniformity_p"], 3),
                     near])
    return _table(["prompt", "layer", "n", "mean", "kurtosis", "skew", "spikes", "burstiness",
                   "acf lag 1 (band)", "uniformity p", "spikes near transitions (expected)"],
                  rows)


def _med(values) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return median(vals) if vals else None


def _all_metrics(stats_rows: list[Row]) -> list[str]:
    rows = []
    for metric in (*PROBE_METRICS, "surprise", "entropy", "entropy_gradient"):
        group = [r for r in stats_rows if r["metric"] == metric and r["head"] == db.ALL_HEADS]
        if not group:
            continue
        n = sum(r["n"] for r in group)
        rate = 100 * sum(r["n_spikes"] for r in group) / n if n else None
        rows.append([metric, len(group), _f(_med(r["kurtosis"] for r in group)),
                     _f(_med(r["skew"] for r in group)),
                     _f(_med(r["burstiness"] for r in group)),
                     _f(_med(r["acf_lag1"] for r in group)), _f(rate, 1)])
    return _table(["metric", "series", "median kurtosis", "median skew", "median burstiness",
                   "median acf lag 1", "spikes per 100 positions"], rows)


def _policy_table(links) -> list[str]:
    rows = [[lk.policy, f"{lk.budget:g}", _f(lk.kept_all), _f(lk.kept_high), _f(lk.ratio),
             _f(lk.rho), f"{lk.n_significant}/{lk.n_units}"] for lk in links]
    return _table(["policy", "budget", "kept: all positions", "kept: high-novelty",
                   "ratio", "median Spearman ρ (novelty, score)", "series with p < 0.05"], rows)


def _limitations(runs: list[Row], stats_rows: list[Row], metric: str) -> list[str]:
    n = [r["n"] for r in units(stats_rows, metric)]
    items = [f"Analysed positions per series: {min(n)} to {max(n)}; kurtosis, burstiness and "
             "autocorrelation from fewer than a few hundred positions are noisy." if n else
             "No series to analyse."]
    items.append("Verdicts pool (prompt, layer) series of the primary metric and are not "
                 "corrected for testing several hypotheses.")
    items.append("Semantic transitions come from a line-based heuristic on the decoded text, "
                 "not from annotations.")
    items.append("The policy link is counterfactual: the hf engine compresses the prompt "
                 "before decoding, the probe compresses prompt + generation at its end.")
    if _is_random(runs):
        items.append("The model has random weights: every finding here is about noise.")
    return ["- " + i for i in items]


def render(conn: sqlite3.Connection, exp_group_id: str, out_dir: Path, cfg: ProbesConfig) -> str:
    runs = db.complete_runs(conn, exp_group_id)
    stats_rows = db.stats_rows(conn, exp_group_id)
    metric = cfg.primary_metric
    found = verdicts(stats_rows, metric)
    links = policy_links(db.compression_rows(conn, exp_group_id), metric)
    lines = [f"# KV novelty probes: {exp_group_id}", ""]
    if _is_random(runs):
        lines += [RANDOM_WARNING, ""]
    supported = [v.hypothesis for v in found if v.verdict == "supported"]
    lines += [f"{len(runs)} prompt(s) probed on {runs[0]['model_name']}; {len(supported)} of "
              f"{len(found)} hypotheses supported by the {metric} novelty of the "
              f"{runs[0]['meta']['segment']} positions.", "", "## Setup", ""]
    lines += _setup(runs, cfg) + ["", "## Hypotheses", ""]
    lines += _table(["hypothesis", "verdict", "evidence"],
                    [[v.hypothesis, v.verdict, v.evidence] for v in found])
    lines += ["", f"## Per series ({metric}, all selected heads of a layer)", ""]
    lines += _per_series(stats_rows, metric)
    lines += ["", "## Every metric (medians over prompts and layers)", ""]
    lines += _all_metrics(stats_rows)
    lines += ["", "## Does compression keep the novel entries?", ""]
    if links:
        lines += _policy_table(links) + [""] + ["- " + link_words(lk) for lk in links]
    else:
        lines += ["No compressed setting: kv.policies × kv.budgets (< 1) is empty."]
    lines += ["", "## Figures", ""]
    for name in NOVELTY_PLOTS:
        if (Path(out_dir) / name).is_file():
            lines += [f"![{CAPTIONS[name]}]({name})", "", f"*{CAPTIONS[name]}* (`{name}`)", ""]
    lines += ["## Definitions", ""] + ["- " + d for d in DEFINITIONS]
    lines += ["", "## Limitations", ""] + _limitations(runs, stats_rows, metric)
    return "\n".join(lines) + "\n"


def write_novelty_report(conn: sqlite3.Connection, exp_group_id: str, run_dir: Path,
                         cfg: ProbesConfig) -> Path | None:
    if not db.has_novelty(conn, exp_group_id):
        return None
    out_dir = Path(run_dir) / "novelty"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_NAME
    path.write_text(render(conn, exp_group_id, out_dir, cfg))
    return path


def link_section(conn: sqlite3.Connection, exp_group_id: str) -> str | None:
    """A few lines for the main report when the novelty tables hold this experiment."""
    if not db.has_novelty(conn, exp_group_id):
        return None
    runs = db.complete_runs(conn, exp_group_id)
    metric = runs[-1]["meta"].get("primary_metric", "cosine")
    found = verdicts(db.stats_rows(conn, exp_group_id), metric)
    links = policy_links(db.compression_rows(conn, exp_group_id), metric)
    lines = []
    if _is_random(runs):
        lines += ["Random-weight model: these novelty findings mean nothing about real "
                  "models.", ""]
    lines += [f"The novelty probe captured the {runs[0]['target']} of {len(runs)} prompt(s) "
              f"({metric} novelty). Full report: "
              f"[novelty/{REPORT_NAME}](novelty/{REPORT_NAME}).", ""]
    lines += [f"- {v.hypothesis}: **{v.verdict}** ({v.evidence})." for v in found]
    lines += ["- " + link_words(lk) for lk in links]
    return "\n".join(lines)
