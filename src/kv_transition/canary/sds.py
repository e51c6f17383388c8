"""The Silent Degradation Score: does perplexity warn you when function breaks?

Per compressed run, against the full-cache run on the same items (and the same held-out
windows), with ``eps = 1e-3``:

    drop = max(0, (f_full - f_comp) / max(f_full, eps))      relative functional drop
    rise = max(0, (p_comp - p_full) / max(p_full, eps))      relative perplexity rise
    SDS  = drop / max(rise, eps)

``f`` is functional accuracy (pass@1 and fully correct tool calls, pooled), ``p`` corpus
perplexity. SDS >> 1: function falls much faster than perplexity rises (the cheap metric
under-warns); about 1: in step; below 1: perplexity warns more than function falls.
Perplexity flat or improving while function drops gives drop / eps, maximally silent, by
design. A model that fails at full cache (f_full = 0) has nothing to lose: drop and SDS are 0
and mean nothing, which the verdict ``baseline_fails`` and the report say plainly.

The CI is a percentile bootstrap over items: functional items are resampled in pairs (the same
item under both caches) and held-out windows likewise, independently of each other.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kv_transition.analysis import queries
from kv_transition.db.connect import transaction
from kv_transition.eval.functional import FUNCTIONAL_METRICS
from kv_transition.settings import AnalysisConfig

EPS = 1e-3
FULL_CACHE_BAR = 0.9  # below this full-cache accuracy an SDS is weak evidence (issue 5)
PLOT_NAME = "divergence.png"
Row = dict[str, Any]


# ---------------------------------------------------------------- the formula

def sds_parts(f_full, f_comp, p_full, p_comp) -> tuple:
    """(drop, rise, SDS) exactly as defined above; works on numpy arrays too."""
    drop = np.maximum(0.0, (f_full - f_comp) / np.maximum(f_full, EPS))
    rise = np.maximum(0.0, (p_comp - p_full) / np.maximum(p_full, EPS))
    return drop, rise, drop / np.maximum(rise, EPS)


def verdict(f_full: float, drop: float, rise: float) -> str:
    if f_full <= 0.0:
        return "baseline_fails"
    if drop <= 0.0:
        return "no_functional_drop"
    if rise < EPS:
        return "silent"
    return "measured"


@dataclass
class Paired:
    """One compressed run next to the full cache: items and windows present in both."""

    func_full: np.ndarray  # per functional item, 0..1
    func_comp: np.ndarray
    nll_full: np.ndarray   # per held-out window: summed loss and token count
    nll_comp: np.ndarray
    n_tokens: np.ndarray
    kv_retained: float | None = None
    kv_retained_ppl: float | None = None
    detail: Row = field(default_factory=dict)


def _ppl(nll: np.ndarray, n: np.ndarray, axis: int | None = None) -> np.ndarray:
    return np.exp(nll.sum(axis=axis) / n.sum(axis=axis))


def score(p: Paired, n_boot: int, ci: float, seed: list[int]) -> Row:
    """SDS, its parts, the bootstrap CI and the verdict for one paired comparison."""
    f_full, f_comp = float(p.func_full.mean()), float(p.func_comp.mean())
    p_full, p_comp = float(_ppl(p.nll_full, p.n_tokens)), float(_ppl(p.nll_comp, p.n_tokens))
    drop, rise, sds = (float(x) for x in sds_parts(f_full, f_comp, p_full, p_comp))
    rng = np.random.default_rng(seed)
    items = rng.integers(0, len(p.func_full), size=(n_boot, len(p.func_full)))
    texts = rng.integers(0, len(p.n_tokens), size=(n_boot, len(p.n_tokens)))
    _, _, boot = sds_parts(p.func_full[items].mean(1), p.func_comp[items].mean(1),
                           _ppl(p.nll_full[texts], p.n_tokens[texts], 1),
                           _ppl(p.nll_comp[texts], p.n_tokens[texts], 1))
    tail = (1.0 - ci) / 2.0
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    return {"n_items": len(p.func_full), "n_texts": len(p.n_tokens), "f_full": f_full,
            "f_comp": f_comp, "ppl_full": p_full, "ppl_comp": p_comp, "func_drop": drop,
            "ppl_rise": rise, "sds": sds, "sds_ci_low": float(low), "sds_ci_high": float(high),
            "kv_retained": p.kv_retained, "kv_retained_ppl": p.kv_retained_ppl,
            "verdict": verdict(f_full, drop, rise),
            "detail": {**p.detail, "baseline_below_bar": f_full < FULL_CACHE_BAR}}


# ---------------------------------------------------------------- from the database

def _functional_rows(conn: sqlite3.Connection, exp_group_id: str) -> dict[int, dict[int, Row]]:
    """run_id -> entry_id -> request row, for functional items only."""
    out: dict[int, dict[int, Row]] = defaultdict(dict)
    for row in queries.request_rows(conn, exp_group_id):
        if row["metric"] in FUNCTIONAL_METRICS:
            out[row["run_id"]][row["entry_id"]] = row
    return out


def _perplexity_rows(conn: sqlite3.Connection, exp_group_id: str) -> dict[int, dict[tuple, Row]]:
    out: dict[int, dict[tuple, Row]] = defaultdict(dict)
    for row in conn.execute(
            "SELECT p.* FROM perplexity p JOIN runs r ON r.run_id = p.run_id "
            "WHERE r.exp_group_id = ?", (exp_group_id,)):
        out[row["run_id"]][(row["text_id"], row["text_hash"])] = dict(row)
    return out


def _kind_rates(conn: sqlite3.Connection, exp_group_id: str) -> dict[int, Row]:
    """Per run: code pass@1 and the tool-call parts, as rates (None when the kind is absent)."""
    rows = conn.execute(
        "SELECT q.run_id, f.kind, COUNT(*) AS n, AVG(f.passed) AS passed, "
        "AVG(f.valid_json) AS valid_json, AVG(f.name_ok) AS name_ok, "
        "AVG(f.args_exact) AS args_exact, AVG(f.args_match) AS args_match, "
        "AVG(f.schema_valid) AS schema_valid, SUM(f.timed_out) AS timed_out "
        "FROM functional_scores f JOIN requests q ON q.request_id = f.request_id "
        "JOIN runs r ON r.run_id = q.run_id WHERE r.exp_group_id = ? "
        "GROUP BY q.run_id, f.kind", (exp_group_id,)).fetchall()
    out: dict[int, Row] = defaultdict(dict)
    for r in rows:
        out[r["run_id"]][r["kind"]] = {k: r[k] for k in r.keys() if k not in ("run_id", "kind")}
    return out


def _ratio(comp: list[Any], full: list[Any]) -> float | None:
    pairs = [(c, f) for c, f in zip(comp, full) if c is not None and f is not None]
    total = sum(f for _, f in pairs)
    return sum(c for c, _ in pairs) / total if pairs and total else None


def _acc(row: Row) -> float:
    return float(row["acc"]) if row["acc"] is not None else 0.0


def pair_runs(func: dict[int, dict[int, Row]], ppl: dict[int, dict[tuple, Row]],
              base_id: int, run_id: int) -> Paired | None:
    """The items and windows both runs have; None when either side is empty."""
    entries = sorted(set(func.get(base_id, {})) & set(func.get(run_id, {})))
    texts = sorted(set(ppl.get(base_id, {})) & set(ppl.get(run_id, {})))
    if not entries or not texts:
        return None
    fb, fc = func[base_id], func[run_id]
    pb, pc = ppl[base_id], ppl[run_id]
    return Paired(
        func_full=np.array([_acc(fb[e]) for e in entries]),
        func_comp=np.array([_acc(fc[e]) for e in entries]),
        nll_full=np.array([pb[t]["nll_sum"] for t in texts]),
        nll_comp=np.array([pc[t]["nll_sum"] for t in texts]),
        n_tokens=np.array([pc[t]["n_tokens"] for t in texts], dtype=float),
        kv_retained=_ratio([fc[e]["kv_bytes"] for e in entries],
                           [fb[e]["kv_bytes"] for e in entries]),
        kv_retained_ppl=_ratio([pc[t]["kv_bytes"] for t in texts],
                               [pb[t]["kv_bytes"] for t in texts]))


def compute_sds(conn: sqlite3.Connection, exp_group_id: str, cfg: AnalysisConfig) -> list[Row]:
    """SDS rows for every compressed run that has functional items and perplexity windows."""
    runs = queries.runs_of_group(conn, exp_group_id)
    baselines = queries.baseline_by_dataset(runs)
    func, ppl = _functional_rows(conn, exp_group_id), _perplexity_rows(conn, exp_group_id)
    kinds = _kind_rates(conn, exp_group_id)
    out = []
    for run in runs:
        base = baselines.get(run["dataset_id"])
        if base is None or queries.is_baseline(run):
            continue
        paired = pair_runs(func, ppl, base["run_id"], run["run_id"])
        if paired is None:
            continue
        paired.detail = {"kinds_comp": kinds.get(run["run_id"], {}),
                         "kinds_full": kinds.get(base["run_id"], {})}
        row = score(paired, cfg.n_bootstrap, cfg.ci, [cfg.seed, run["run_id"]])
        out.append({"run_id": run["run_id"], "baseline_run_id": base["run_id"], **row})
    return out


_COLUMNS = ("run_id", "baseline_run_id", "n_items", "n_texts", "f_full", "f_comp", "ppl_full",
            "ppl_comp", "func_drop", "ppl_rise", "sds", "sds_ci_low", "sds_ci_high",
            "kv_retained", "kv_retained_ppl", "verdict")


def write_sds(conn: sqlite3.Connection, exp_group_id: str, cfg: AnalysisConfig) -> list[Row]:
    """Recompute the group's ``sds`` rows (delete and insert in one transaction)."""
    rows = compute_sds(conn, exp_group_id, cfg)
    run_ids = [(r["run_id"],) for r in queries.runs_of_group(conn, exp_group_id)]
    with transaction(conn):
        conn.executemany("DELETE FROM sds WHERE run_id=?", run_ids)
        conn.executemany(
            f"INSERT INTO sds({', '.join(_COLUMNS)}, detail_json) "
            f"VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})",
            [tuple(r[c] for c in _COLUMNS) + (json.dumps(r["detail"]),) for r in rows])
    return rows


def sds_rows(conn: sqlite3.Connection, exp_group_id: str) -> list[Row]:
    """Stored SDS rows with their run's policy and budget, in run order."""
    rows = [dict(r) for r in conn.execute(
        "SELECT s.*, r.kv_policy, r.kv_budget FROM sds s JOIN runs r ON r.run_id = s.run_id "
        "WHERE r.exp_group_id = ? ORDER BY r.kv_policy, r.kv_budget DESC", (exp_group_id,))]
    for row in rows:
        row["detail"] = json.loads(row.pop("detail_json") or "{}")
    return rows


# ---------------------------------------------------------------- the divergence chart

def _panel(ax, policy: str, rows: list[Row]) -> None:
    """Functional accuracy (solid) and full ppl / ppl (dashed) against measured KV retained."""
    rows = sorted(rows, key=lambda r: -(r["kv_retained"] or r["kv_budget"]))
    f_full = rows[0]["f_full"]
    fx = [1.0] + [r["kv_retained"] if r["kv_retained"] is not None else r["kv_budget"]
                  for r in rows]
    px = [1.0] + [r["kv_retained_ppl"] if r["kv_retained_ppl"] is not None else r["kv_budget"]
                  for r in rows]
    ax.plot(fx, [f_full] + [r["f_comp"] for r in rows], "-o", color="#1f77b4",
            label="functional accuracy")
    ax.plot(px, [1.0] + [r["ppl_full"] / r["ppl_comp"] for r in rows], "--s", color="#d62728",
            label="full-cache ppl ÷ ppl")
    for x, r in zip(fx[1:], rows):
        ax.annotate(f"{float(r['kv_budget']):g}", (x, r["f_comp"]), textcoords="offset points",
                    xytext=(4, 4), fontsize=7, color="#1f77b4")
    ax.set_title(policy)
    ax.set_xlim(1.05, -0.02)  # from the full cache (left) to less memory (right)
    ax.set_ylim(-0.03, max(1.1, *(r["ppl_full"] / r["ppl_comp"] for r in rows)) + 0.03)
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("measured KV memory retained (fraction of full cache)")
    ax.legend(fontsize=8, loc="best")


def write_divergence_plot(rows: list[Row], path: Path, exp_group_id: str) -> Path | None:
    """plots/divergence.png, one panel per policy; None (and no file) without SDS rows."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    if not rows:
        path.unlink(missing_ok=True)  # a stale chart must not outlive its data
        return None
    by_policy: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_policy[row["kv_policy"]].append(row)
    width = 5.0 * len(by_policy) + 0.8
    fig = Figure(figsize=(width, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(by_policy), squeeze=False)[0]
    for ax, policy in zip(axes, sorted(by_policy)):
        _panel(ax, policy, by_policy[policy])
    axes[0].set_ylabel("accuracy  |  full-cache ppl ÷ ppl")
    fig.suptitle(f"Does perplexity warn when function breaks? — {exp_group_id}")
    # fixed margins in inches, so one panel or five leave room for the axis label
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.14, top=0.84,
                        wspace=0.22)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def analyze_sds(conn: sqlite3.Connection, exp_group_id: str, cfg: AnalysisConfig,
                plots_dir: Path) -> dict[str, Any]:
    """The analyze-phase hook: SDS rows, then the chart drawn from the stored rows."""
    write_sds(conn, exp_group_id, cfg)
    rows = sds_rows(conn, exp_group_id)
    plot = write_divergence_plot(rows, Path(plots_dir) / PLOT_NAME, exp_group_id)
    return {"n_sds": len(rows), "divergence_plot": str(plot) if plot else None}


# ---------------------------------------------------------------- the report section

def _num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"


_VERDICT_WORDS = {
    "baseline_fails": "the model fails at full cache (f_full = 0): SDS means nothing",
    "no_functional_drop": "no functional drop (equal or better than the full cache)",
    "silent": "function drops while perplexity stays flat or improves: maximally silent",
    "measured": "both moved; SDS is their ratio",
}


def _kind_text(kinds: Row) -> tuple[str, str]:
    code, tool = kinds.get("code"), kinds.get("tool")
    code_text = _num(code["passed"], 2) if code else "—"
    tool_text = "—" if not tool else (
        f"{_num(tool['passed'], 2)} (JSON {_num(tool['valid_json'], 2)}, name "
        f"{_num(tool['name_ok'], 2)}, args {_num(tool['args_exact'], 2)} / per-arg "
        f"{_num(tool['args_match'], 2)}, schema {_num(tool['schema_valid'], 2)})")
    return code_text, tool_text


def _table_row(r: Row) -> Row:
    code, tool = _kind_text(r["detail"].get("kinds_comp", {}))
    return {
        "setting": f"{r['kv_policy']} ({float(r['kv_budget']):g})",
        "kv": _num(r["kv_retained"], 2), "n": f"{r['n_items']} / {r['n_texts']}",
        "func": f"{_num(r['f_comp'], 2)} vs {_num(r['f_full'], 2)}",
        "ppl": f"{_num(r['ppl_comp'], 2)} vs {_num(r['ppl_full'], 2)}",
        "drop": _num(r["func_drop"], 3), "rise": _num(r["ppl_rise"], 3),
        "sds": f"{_num(r['sds'], 3)} [{_num(r['sds_ci_low'], 3)}, {_num(r['sds_ci_high'], 3)}]",
        "code": code, "tool": tool, "verdict": _VERDICT_WORDS[r["verdict"]],
    }


def _warnings(rows: list[Row]) -> list[str]:
    f_full = min(r["f_full"] for r in rows)
    if f_full <= 0.0:
        return [f"The model fails every functional item at full cache (functional accuracy "
                f"{_num(f_full, 2)}). With nothing to lose, drop and SDS are 0 by the formula: "
                "**these SDS values mean nothing** and say nothing about whether perplexity "
                "warns. Use a model that passes at full cache (pass@1 ≥ 0.9)."]
    if f_full < FULL_CACHE_BAR:
        return [f"Full-cache functional accuracy is {_num(f_full, 2)}, below the "
                f"{FULL_CACHE_BAR} bar: a drop from a weak baseline is weak evidence."]
    return []


def report_section(conn: sqlite3.Connection, exp_group_id: str, run_dir: Path) -> Row | None:
    """What the report's SDS section shows; None when the experiment has no SDS rows."""
    rows = sds_rows(conn, exp_group_id)
    if not rows:
        return None
    base_code, base_tool = _kind_text(rows[0]["detail"].get("kinds_full", {}))
    return {"rows": [_table_row(r) for r in rows], "warnings": _warnings(rows), "eps": EPS,
            "baseline": {"code": base_code, "tool": base_tool, "func": _num(rows[0]["f_full"], 2),
                         "ppl": _num(rows[0]["ppl_full"], 2)},
            "plot": PLOT_NAME, "plot_exists": (Path(run_dir) / "plots" / PLOT_NAME).is_file()}
