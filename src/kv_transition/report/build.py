"""The ``report`` phase: render runs/<exp_group_id>/report.md from the database alone.

Every number in the report is computed here from bin_stats, transition_summary and telemetry;
the template only lays them out. Nothing from the environment is read, so no secret can leak.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from kv_transition.analysis import queries
from kv_transition.analysis.aggregate import CORRECT_AT, MIB, run_memory
from kv_transition.analysis.plots import PLOT_NAMES, run_label, scope_label
from kv_transition.analysis.power import PLANTED, SCENARIOS, zone_detection_rate
from kv_transition.canary.sds import report_section as sds_section
from kv_transition.probes.report import link_section as novelty_link_section
from kv_transition.analysis.transition import bin_span, reference_words
from kv_transition.errors import BadInput
from kv_transition.kv.quant.accounting import ratios_from_notes
from kv_transition.kv.registry import budget_label, is_token_budget

Row = dict[str, Any]
RANDOM_MODEL_PREFIX = "builtin:tiny-random"
POWER_REPS = 100  # simulated experiments behind the report's power line (seconds, not minutes)
FIGURES = {
    "acc_vs_len.png": "Accuracy vs context length (mean and interval per bin)",
    "std_vs_len.png": "Accuracy spread (sample std across examples) per bin",
    "failrate_vs_len.png": "Failure rate per bin",
    "flip_vs_len.png": "Flip rate: answers whose correctness differs from the full cache",
    "latency_vs_len.png": "Latency per request: p50, whisker to p95",
    "mem_vs_budget.png": "Measured KV cache size and peak memory vs budget",
    "acc_vs_kv_memory.png": "Accuracy vs measured KV memory, every policy on one axis: the true "
                            "bytes held (codes + scales + zero-points + full-precision residual), "
                            "each point labelled with its nominal budget",
}


# ---------------------------------------------------------------- formatting

def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def pts(x: float | None, signed: bool = True) -> str:
    """An accuracy difference in percentage points."""
    if x is None:
        return "—"
    return f"{100 * x:+.1f}" if signed else f"{100 * abs(x):.1f}"


def ci_text(low: float | None, high: float | None, scale: str = "acc") -> str:
    if low is None or high is None:
        return ""
    if scale == "pts":
        return f"[{pts(low)}, {pts(high)}]"
    return f"[{fmt(low)}, {fmt(high)}]"


def tokens(row: Row) -> str:
    if row.get("token_min") is None:
        return f"bin {row['bin_idx']}"
    return f"{row['token_min']}–{row['token_max']}"


def _env() -> Environment:
    env = Environment(loader=PackageLoader("kv_transition.report", "templates"),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True, autoescape=False)
    env.filters["cell"] = lambda v: str(v).replace("|", "\\|").replace("\n", " ")
    return env


# ---------------------------------------------------------------- inputs

def _config(experiment: Row) -> Row:
    try:
        data = yaml.safe_load(experiment["config_yaml"]) or {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _ci_level(config: Row) -> float:
    analysis = config.get("analysis") if isinstance(config.get("analysis"), dict) else {}
    return float(analysis.get("ci", 0.95))


def _load(conn: sqlite3.Connection, exp_group_id: str) -> Row:
    experiment = queries.experiment(conn, exp_group_id)
    if experiment is None:
        raise BadInput(f"experiment {exp_group_id!r} is not in the database: run `prepare` first")
    stats = queries.bin_stats_rows(conn, exp_group_id)
    if not stats:
        raise BadInput(f"experiment {exp_group_id!r} has no bin statistics: run `analyze` first")
    runs = queries.runs_of_group(conn, exp_group_id)
    by_run: dict[int, list[Row]] = defaultdict(list)
    for row in stats:
        by_run[row["run_id"]].append(row)
    many = len({r["dataset_id"] for r in runs}) > 1
    for run in runs:
        run["label"] = run_label(run, many)
        run["is_baseline"] = queries.is_baseline(run)
    config = _config(experiment)
    return {"experiment": experiment, "config": config, "ci": _ci_level(config), "runs": runs,
            "stats": by_run, "baselines": queries.baseline_by_dataset(runs),
            "memory": run_memory(conn, exp_group_id),
            "transitions": {t["run_id"]: t for t in queries.transition_rows(conn, exp_group_id)},
            "failures": queries.failure_counts(conn, exp_group_id),
            "datasets": queries.datasets_of_group(conn, exp_group_id),
            "n_requests": queries.count_requests(conn, exp_group_id)}


# ---------------------------------------------------------------- sections

def _distinct(runs: list[Row], key: str) -> list[Any]:
    return sorted({r[key] for r in runs})


def _setup(conn: sqlite3.Connection, d: Row) -> Row:
    runs, exp = d["runs"], d["experiment"]
    query_aware = {bool(r["query_aware"]) for r in runs}
    evaluated = sum(s["n"] for rows in d["stats"].values() for s in rows)
    return {
        "models": ", ".join(_distinct(runs, "model_name")),
        "engines": ", ".join(_distinct(runs, "engine_name")),
        "datasets": ", ".join(f"{ds['name']} / {ds['task']}" for ds in d["datasets"]),
        "policies": ", ".join(_distinct(_compressed(d), "kv_policy")) or "none",
        "baseline": "present" if d["baselines"] else "missing",
        "budgets": ", ".join(budget_label(b) for b in sorted(
            {float(r["kv_budget"]) for r in runs}, key=lambda b: (is_token_budget(b), -b))),
        "query_aware": ("yes" if query_aware == {True} else "no" if query_aware == {False}
                        else "mixed"),
        "n_requests": d["n_requests"], "n_evaluated": evaluated,
        "config_hash": hashlib.sha256(exp["config_yaml"].encode()).hexdigest()[:12],
        "git_hash": exp["git_hash"] or "unknown", "created_at": exp["created_at"],
        "bins": [{"dataset": ds["name"], **b} for ds in d["datasets"]
                 for b in queries.bins_of_dataset(conn, ds["dataset_id"])],
    }


def _delta_text(s: Row) -> str:
    return f"{pts(s['acc_delta'])} {ci_text(s['acc_delta_ci_low'], s['acc_delta_ci_high'], 'pts')}"


def _p_text(p: float | None) -> str:
    return "—" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _methods(d: Row) -> Row:
    """The interval and test names stored beside the numbers, as the report states them."""
    rows = [s for rows in d["stats"].values() for s in rows]
    names = lambda key: ", ".join(sorted({s.get(key) for s in rows if s.get(key)})) or "—"  # noqa: E731
    return {"acc": names("acc_ci_method"), "delta": names("acc_delta_ci_method"),
            "test": names("acc_delta_test"), "fail": names("fail_ci_method")}


def _results(d: Row) -> list[Row]:
    rows = []
    for run in d["runs"]:
        for s in d["stats"].get(run["run_id"], []):
            kv = s["kv_bytes_mean"]
            rows.append({
                "setting": run["label"], "bin": s["bin_idx"], "tokens": tokens(s), "n": s["n"],
                "acc": f"{fmt(s['acc_mean'])} {ci_text(s['acc_ci_low'], s['acc_ci_high'])}",
                "delta": "baseline" if run["is_baseline"] else _delta_text(s),
                "delta_p": "—" if run["is_baseline"] else _p_text(s.get("acc_delta_p")),
                "flip": fmt(s["flip_rate"], 2), "fail": fmt(s["fail_rate"], 2),
                "lat": fmt(s["lat_p50"], 3), "kv": fmt(None if kv is None else kv / MIB, 2),
            })
    return rows


def _compressed(d: Row) -> list[Row]:
    return [r for r in d["runs"] if not r["is_baseline"] and r["run_id"] in d["stats"]]


def _longest_bin_finding(run: Row, d: Row) -> str | None:
    last = max(d["stats"][run["run_id"]], key=lambda s: s["bin_idx"])
    delta = last["acc_delta"]
    if delta is None:
        return None
    ci = ci_text(last["acc_delta_ci_low"], last["acc_delta_ci_high"], "pts")
    where = f"in the longest bin ({tokens(last)} tokens)"
    head = f"At budget {budget_label(float(run['kv_budget']))}, {run['kv_policy']}"
    if delta == 0:
        return f"{head} matches the full cache {where} (Δ 0.0 points, CI {ci})."
    verb = "loses" if delta < 0 else "gains"
    return (f"{head} {verb} {pts(delta, signed=False)} points of accuracy (CI {ci}) {where} "
            "vs the full cache.")


def _largest_drop_finding(d: Row) -> str:
    drops = [(s["acc_delta"], run, s) for run in _compressed(d) for s in d["stats"][run["run_id"]]
             if s["acc_delta_ci_high"] is not None and s["acc_delta_ci_high"] < 0]
    if not drops:
        return (f"No setting is significantly below the full cache in any bin (every Δ "
                f"{d['ci']:.0%} CI reaches 0 or above).")
    delta, run, s = min(drops, key=lambda t: t[0])
    return (f"Largest significant drop: {run['label']} in bin {s['bin_idx']} ({tokens(s)} "
            f"tokens), {pts(delta)} points (CI "
            f"{ci_text(s['acc_delta_ci_low'], s['acc_delta_ci_high'], 'pts')}).")


def _is_safe(run: Row, d: Row) -> bool:
    stats = d["stats"][run["run_id"]]
    return all(s["acc_delta_ci_low"] is not None and s["acc_delta_ci_high"] >= 0 for s in stats)


def _cost(run: Row, d: Row) -> tuple[float, float]:
    kv = (d["memory"].get(run["run_id"]) or {}).get("kv_mib")
    return (kv if kv is not None else float("inf"), float(run["kv_budget"]))


def _safe_budget_finding(d: Row) -> str:
    safe = [r for r in _compressed(d) if _is_safe(r, d)]
    if not safe:
        return ("No compressed setting is safe: each has at least one bin significantly below "
                "the full cache.")
    best = min(safe, key=lambda r: _cost(r, d))
    return (f"Safe budget: the cheapest setting whose Δ CI includes 0 (or lies above it) in every "
            f"bin is {best['label']}. Not significantly worse is not proof of equivalence: "
            f"check the CI widths in the results table.")


# Measured bytes may exceed the budget a little (the question after a context-only prefill is
# kept whole); a quarter of the full cache above it means the press freed nothing like it.
MEMORY_SLACK = 0.25


def _memory_findings(d: Row) -> list[str]:
    out, bounded = [], 0.0
    for run in _compressed(d):
        base = d["baselines"].get(run["dataset_id"])
        mem = d["memory"].get(run["run_id"]) or {}
        full = d["memory"].get(base["run_id"]) if base else None
        if mem.get("kv_mib") is None or not full or full.get("kv_mib") in (None, 0):
            continue
        kept = mem["kv_mib"] / full["kv_mib"]
        out.append(f"Memory: {run['label']} holds {mem['kv_mib']:.2f} MiB of KV cache per request "
                   f"vs {full['kv_mib']:.2f} MiB for the full cache ({1 - kept:.0%} less, "
                   "measured).")
        bounded = max(bounded, full.get("bounded_share") or 0.0)
        budget = float(run["kv_budget"])
        if is_token_budget(budget):  # the fraction kept differs by request: no expectation
            continue
        if kept > _best_kept(full, budget) + MEMORY_SLACK:
            out.append(f"**Memory did not fall with the budget**: {run['label']} keeps "
                       f"{kept:.0%} of the full cache's bytes at budget {budget:g}. "
                       "Its press masks or zeroes entries instead of dropping them (AdaKV's "
                       "head-wise budgets, ThinK's channels), so attention sees fewer entries "
                       "but no memory is freed.")
    if bounded > 0:
        out.append(f"Memory: {bounded:.0%} of the full cache sits in sliding-window layers, "
                   "which hold at most their window and which no press compresses; at budget "
                   f"b a press can at best keep {bounded:.0%} + {1 - bounded:.0%} x b of the "
                   "bytes.")
    return out or ["Memory: KV bytes were not measured for a compressed run and its baseline; "
                   "any saving is nominal (the budget), not measured."]


def _best_kept(full: Row, budget: float) -> float:
    """The least share of the full cache's bytes a press can keep at a fractional budget:
    window-bounded (sliding) layers are never compressed."""
    bounded = full.get("bounded_share") or 0.0
    return bounded + (1 - bounded) * budget


# A full cache that answers nothing leaves compression nothing to lose: every Δ is 0, so
# "matches the full cache" and "safe budget" would be true and meaningless (issue 12 saw
# "snapkv (0.2)" called safe on the random-weight default). Memory and instability still are.
BASELINE_FAILS = ("No accuracy finding: the full cache answers no example correctly (accuracy 0 "
                  "in every bin), so compression has nothing to lose and no setting can be "
                  "called matching or safe. Use a model that solves the task at full cache.")


def _baseline_fails(d: Row) -> bool:
    accs = [s["acc_mean"] for base in d["baselines"].values()
            for s in d["stats"].get(base["run_id"], [])]
    return bool(accs) and all(not a for a in accs)


def _findings(d: Row) -> list[str]:
    if not d["baselines"]:
        return ["No full-cache baseline run (policy 'full', budget 1.0): no paired deltas, "
                "flip rates or safe budget can be computed."]
    if _baseline_fails(d):
        findings = [BASELINE_FAILS]
    else:
        findings = [f for r in _compressed(d) if (f := _longest_bin_finding(r, d))]
        findings += [_largest_drop_finding(d), _safe_budget_finding(d)]
    findings += _memory_findings(d)
    zones = [t for t in d["transitions"].values() if t["rationale"].get("verdict") == "transition"]
    findings.append(f"Transition zones with strong evidence: {len(zones)} of "
                    f"{len(d['transitions'])} runs (details below).")
    return findings


def _zone_text(z: Row, by_bin: dict[int, Row], r: Row) -> str:
    a, b = z["start"], z["end"]
    span = f"{tokens(by_bin[a]).split('–')[0]}–{tokens(by_bin[b]).split('–')[-1]}"
    signals = ", ".join(SIGNAL_WORDS[sig] for sig in z["signals"])
    return (f"{bin_span(a, b)} ({span} tokens): {signals} above the reference "
            f"{reference_words(z['reference_bins'])} ({z['test'].replace('_', ' ')}; strongest: "
            f"{SIGNAL_WORDS[z['signal']]} +{pts(z['statistic'], signed=False)} points, p = "
            f"{_p_text(z['p_value'])}, {r['multiplicity'].upper()}-adjusted p = "
            f"{_p_text(z['p_adjusted'])} < {r['level']:.3g})")


SIGNAL_WORDS = {"fail": "failure rate", "flip": "flip rate", "changed": "changed-answer rate"}


def _transition_words(t: Row, by_bin: dict[int, Row]) -> str:
    r = t["rationale"]
    zones = "; ".join(_zone_text(z, by_bin, r) for z in r["zones"])
    return f"Instability rises before accuracy collapses in {zones}."


def _zone_words(t: Row, run: Row, d: Row) -> str:
    r = t["rationale"]
    verdict = r.get("verdict")
    by_bin = {s["bin_idx"]: s for s in d["stats"].get(run["run_id"], [])}
    collapse = "" if r.get("collapse_bin") is None else (
        f" Accuracy first falls to the collapse floor ({fmt(r.get('collapse_floor'), 2)}) "
        f"at bin {r['collapse_bin']}.")
    if verdict == "transition":
        return _transition_words(t, by_bin) + collapse
    if verdict == "weak":
        return f"Evidence is weak, so no zone is claimed: {r['why']}.{collapse}"
    words = {"no_instability": f"No bin's instability is above the reference's: {r.get('why')}.",
             "baseline": "The full cache: every compressed run is compared with it.",
             "no_reference": "Every bin has collapsed: there is no stable bin to compare with.",
             "no_tests": "No instability signal could be tested outside the reference bins.",
             "constant": "Every signal is identical across bins; there is nothing to detect.",
             "too_few_bins": "Only one length bin; a transition needs several.",
             "no_data": "No statistics for this run."}
    return words.get(verdict, str(r.get("why", ""))) + collapse


def _transitions(d: Row) -> list[Row]:
    out = []
    for run in d["runs"]:
        t = d["transitions"].get(run["run_id"])
        if t is None:
            continue
        zone = "—" if t["transition_bin_start"] is None else \
            f"{t['transition_bin_start']}–{t['transition_bin_end']}"
        out.append({"setting": run["label"], "verdict": t["rationale"].get("verdict"),
                    "zone": zone, "words": _zone_words(t, run, d)})
    return out


def _power_line(d: Row) -> str:
    """What "no zone" can mean at this run's size: the power suite's planted zones, detected
    at this many examples per bin (analysis/power.py, the code benchmarks/detector_power.py
    runs). Both are quoted: a zone where only failures rise is found less often than one
    where answers change too, and either rate alone would misstate the other."""
    ns = sorted(s["n"] for rows in d["stats"].values() for s in rows)
    if not ns:
        return ""
    n = ns[len(ns) // 2]
    looks = max((t["rationale"].get("looks") or 1 for t in d["transitions"].values()),
                default=1)
    rates = {name: zone_detection_rate(n, looks, POWER_REPS, scenario=name) for name in PLANTED}
    found = " and ".join(f"{rate:.0%} ({SCENARIOS[name].note})" for name, rate in rates.items())
    return (f"With {n} examples per bin, the zones planted in the power suite are found "
            f"{found} of the time ({POWER_REPS} simulated experiments each; "
            f"benchmarks/detector_power.py). "
            + ("So \"no zone\" here may well mean \"too few examples\"."
               if min(rates.values()) < 0.8 else
               "So \"no zone\" here is informative for effects of those sizes."))


def _failures(d: Row) -> list[Row]:
    by_run: dict[int, list[str]] = defaultdict(list)
    totals: dict[int, int] = defaultdict(int)
    for f in d["failures"]:
        by_run[f["run_id"]].append(f"{f['failure_type']}: {f['n']}")
        totals[f["run_id"]] += f["n"]
    return [{"setting": r["label"], "n": sum(s["n"] for s in d["stats"].get(r["run_id"], [])),
             "failed": totals[r["run_id"]], "types": ", ".join(by_run[r["run_id"]]) or "none"}
            for r in d["runs"]]


def _scopes(d: Row) -> set[str]:
    return set().union(*(m["scopes"] for m in d["memory"].values())) if d["memory"] else set()


def _limitations(d: Row, random_model: bool) -> list[str]:
    ns = [s["n"] for rows in d["stats"].values() for s in rows]
    n_tests = sum(1 for r in _compressed(d) for _ in d["stats"][r["run_id"]])
    items = [
        f"Examples per bin: {min(ns)} to {max(ns)}. With fewer than ~30 per bin the CIs are "
        "wide and small differences are invisible.",
        f"Accuracy and Δ intervals ({d['ci']:.0%}; methods named under the results table) are "
        f"per bin and not corrected for multiple comparisons ({n_tests} compressed run × bin "
        "comparisons): some 'significant' differences are expected by chance. Transition "
        "verdicts are corrected across every bin, signal and setting.",
        f"Flip rate counts an answer as correct when its accuracy is ≥ {CORRECT_AT}; divergence "
        "(in bin_stats.csv) is 1 − token F1 between this run's and the full cache's normalized "
        "answers.",
    ]
    scopes = _scopes(d)
    if "process" in scopes:
        items.append("Peak memory is the process-wide peak for the run (CPU), not a per-request "
                     "peak: it includes the weights and every earlier request, so only measured "
                     "KV bytes compare settings.")
    elif not scopes:
        items.append("Peak memory was not recorded.")
    if any(t["rationale"].get("verdict") == "weak" for t in d["transitions"].values()):
        items.append("Some runs show suggestive but not significant instability; they are "
                     "reported as weak, not as transition zones. `kv-transition refine` adds "
                     "examples to exactly those bins.")
    if random_model:
        items.append(f"The model is {RANDOM_MODEL_PREFIX} (random weights): accuracy measures "
                     "nothing; this report only checks the pipeline.")
    return items


def _summary(d: Row, setup: Row, findings: list[str]) -> str:
    bins = setup["bins"]
    span = f"{min(b['token_min'] for b in bins)}–{max(b['token_max'] for b in bins)} tokens" \
        if bins else "unknown lengths"
    n_comp = len(_compressed(d))
    headline = next((f for f in findings
                     if f.startswith(("Largest", "No setting", "No accuracy finding"))), "")
    return (f"This report compares {n_comp} compressed KV-cache setting(s) (policies "
            f"{setup['policies']}; budgets {setup['budgets']}) with the full cache for "
            f"{setup['models']} on {setup['datasets']}, over {len(bins)} context-length bins "
            f"({span}) and {setup['n_evaluated']} evaluated requests. {headline}").strip()


def _spans(indices: tuple[int, ...]) -> str:
    """``0–3, 5, 11`` from sorted layer indices."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def layers_text(counts: Counter | None) -> str:
    """The layers a setting's requests held fewer tokens in than they were fed: the commonest
    set, and how many requests differ (a press may skip a layer on short inputs)."""
    if not counts:
        return "—"
    (compressed, n_layers), most = counts.most_common(1)[0]
    if not compressed:
        text = "none"
    elif len(compressed) == n_layers:
        text = f"all {n_layers}"
    else:
        text = f"{_spans(compressed)} of {n_layers}"
    others = sum(counts.values()) - most
    return text + (f" ({others} requests differ)" if others else "")


def _accounting(conn: sqlite3.Connection, d: Row) -> Row:
    """Per run: nominal budget vs payload and true ratios against a 16-bit cache (means of the
    per-request figures the engine measured from the stored tensors)."""
    notes: dict[int, list[Row]] = defaultdict(list)
    layers: dict[int, Counter] = defaultdict(Counter)
    for r in queries.request_rows(conn, d["experiment"]["exp_group_id"]):
        raw = json.loads(r["notes_json"] or "{}")
        n = ratios_from_notes(raw)
        if n is not None:
            notes[r["run_id"]].append(n)
        if raw.get("kv_layer_tokens") is not None:
            layers[r["run_id"]][(tuple(raw["layers_compressed"]), len(raw["kv_layer_tokens"]))] += 1
    mean = lambda rows, k: (sum(r[k] for r in rows) / len(rows)  # noqa: E731
                            if rows and all(r.get(k) is not None for r in rows) else None)
    rows = [{"setting": run["label"], "budget": budget_label(float(run["kv_budget"])),
             "nominal": fmt(mean(notes[run["run_id"]], "kv_budget_nominal")),
             "payload": fmt(mean(notes[run["run_id"]], "kv_ratio_payload")),
             "true": fmt(mean(notes[run["run_id"]], "kv_ratio_true")),
             "layers": layers_text(layers.get(run["run_id"]))}
            for run in d["runs"] if notes.get(run["run_id"])]
    caveats = sorted({n["kv_ratio_note"] for rows_ in notes.values() for n in rows_
                      if n.get("kv_ratio_note")})
    return {"rows": rows, "caveats": caveats}


ACCURACY_PLOTS = ("acc_vs_len.png", "std_vs_len.png", "flip_vs_len.png", "acc_vs_kv_memory.png")


def _systems_mode(config: Row) -> str | None:
    """The shape name when the model has random weights of a real architecture (systems mode)."""
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return model.get("shape") if model.get("init") == "random" else None


def _integrity(conn: sqlite3.Connection, exp_group_id: str) -> list[Row]:
    """The integration checks each compressing policy passed before its requests ran."""
    rows = conn.execute("SELECT kv_policy, model_class, passed, checks_json FROM "
                        "integrity_checks WHERE exp_group_id=? ORDER BY kv_policy",
                        (exp_group_id,)).fetchall()
    return [{"policy": r[0], "model_class": r[1], "passed": bool(r[2]),
             "checks": "; ".join(c["detail"] for c in json.loads(r[3]))} for r in rows]


def report_context(conn: sqlite3.Connection, exp_group_id: str, run_dir: Path) -> Row:
    d = _load(conn, exp_group_id)
    setup = _setup(conn, d)
    findings = _findings(d)
    models = _distinct(d["runs"], "model_name")
    random_model = any(m.startswith(RANDOM_MODEL_PREFIX) for m in models)
    plots_dir = Path(run_dir) / "plots"
    systems = _systems_mode(d["config"])
    if systems:  # random weights of a real shape: only latency and memory mean anything
        findings = [f for f in findings if f.startswith("Memory")]
    return {
        "exp_group_id": exp_group_id, "summary": _summary(d, setup, findings),
        "random_model": random_model, "setup": setup, "ci": d["ci"], "systems_mode": systems,
        "figures": [{"name": n, "caption": FIGURES[n], "exists": (plots_dir / n).is_file()}
                    for n in PLOT_NAMES if not (systems and n in ACCURACY_PLOTS)],
        "results": [] if systems else _results(d), "findings": findings, "transitions": _transitions(d),
        "methods": _methods(d), "power": _power_line(d),
        "failures": _failures(d), "limitations": _limitations(d, random_model),
        "mem_scope": scope_label(_scopes(d)), "accounting": _accounting(conn, d),
        "integrity": _integrity(conn, exp_group_id),
        "sds": sds_section(conn, exp_group_id, run_dir),  # None: no SDS data, no section
        "novelty": novelty_link_section(conn, exp_group_id),  # None: no novelty probe rows
    }


def build_report(conn: sqlite3.Connection, exp_group_id: str, run_dir: Path) -> Path:
    """Render ``run_dir/report.md`` from the database; returns its path."""
    run_dir = Path(run_dir)
    text = _env().get_template("report.md.jinja").render(
        **report_context(conn, exp_group_id, run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "report.md"
    path.write_text(text)
    return path
