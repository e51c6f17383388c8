"""Power and calibration of the transition detector and the intervals on planted scenarios.

Every replicate goes through aggregate.run_stats and transition.detect_group, the code
`analyze` runs (analysis/power.py draws the requests). Prints markdown tables, chosen with
--tables (default: all but methods):

1. (detector) per scenario and n examples per bin: how often a strong zone is reported, the
   planted zone is found (any reported zone overlaps it) and found exactly, a zone is reported
   outside the planted one (false alarm; every zone is one on the null scenarios), and the
   verdict is weak;
2. (refine) the same with refinement from n = 12 up to --max-n (doubling; alpha split over
   the looks);
3. (coverage) coverage of the stored accuracy interval at p and n, and of the
   paired-difference interval when the compressed run loses 5 points one way;
4. (exact) exact binomial coverage of Wilson and Jeffreys, and what any interval could reach;
5. (methods) exact binomial coverage of every statsmodels ``proportion_confint`` method, to
   choose the stored one; needs statsmodels, which the project does not depend on
   (``pip install statsmodels``).

    OMP_NUM_THREADS=1 python benchmarks/detector_power.py --reps 200 --tables detector
"""

from __future__ import annotations

import argparse
import time

from kv_transition.analysis.power import (SCENARIOS, attainable_coverage, coverage,
                                          exact_coverage, scenario_rates)
from kv_transition.analysis.transition import Policy, planned_looks

NS = (12, 30, 100)
PS = (0.5, 0.9, 0.97)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def detector_table(reps: int, seed: int) -> None:
    print("| scenario | n/bin | strong | planted found | exact extent | false alarm | weak |")
    print("|---|---|---|---|---|---|---|")
    for scen in SCENARIOS.values():
        for n in NS:
            r = scenario_rates(scen, n, reps, seed)
            planted = scen.zone is not None
            print(f"| {scen.name} | {n} | {_pct(r['strong'])} | "
                  f"{_pct(r['detected']) if planted else '—'} | "
                  f"{_pct(r['exact']) if planted else '—'} | {_pct(r['false_alarm'])} | "
                  f"{_pct(r['weak'])} |", flush=True)


def refine_table(reps: int, seed: int, n0: int, max_n: int) -> None:
    looks = planned_looks(n0, max_n)
    print(f"\nWith refinement: n = {n0} per bin, inconclusive bins (and the reference) doubled "
          f"up to {max_n}; {looks} looks at alpha / {looks} each.\n")
    print("| scenario | strong | planted found | false alarm | weak |")
    print("|---|---|---|---|---|")
    for scen in SCENARIOS.values():
        r = scenario_rates(scen, n0, reps, seed, Policy(looks=looks), max_n=max_n)
        planted = scen.zone is not None
        print(f"| {scen.name} | {_pct(r['strong'])} | "
              f"{_pct(r['detected']) if planted else '—'} | {_pct(r['false_alarm'])} | "
              f"{_pct(r['weak'])} |", flush=True)


def coverage_table(reps: int, seed: int) -> None:
    print("\n| p | n | accuracy interval covers p | method | paired Δ = −0.05 covered | "
          "method |")
    print("|---|---|---|---|---|---|")
    for p in PS:
        for n in NS:
            c = coverage(p, n, reps, seed)
            print(f"| {p} | {n} | {_pct(c['acc'])} | {c['acc_method']} | {_pct(c['delta'])} | "
                  f"{c['delta_method']} |", flush=True)


def exact_table() -> None:
    """Exact binomial coverage (no simulation) and what any interval rule could reach."""
    print("\n| p | n | Wilson, exact | Jeffreys, exact | nearest below 93% | in 93–97% | "
          "nearest above 97% |")
    print("|---|---|---|---|---|---|---|")
    for p in PS:
        for n in NS:
            below, inside, above = attainable_coverage(p, n)
            band = f"{len(inside)} values, {_pct(inside[0])}–{_pct(inside[-1])}" if inside \
                else "**none**"
            print(f"| {p} | {n} | {_pct(exact_coverage(p, n))} | "
                  f"{_pct(exact_coverage(p, n, method='jeffreys'))} | {_pct(below)} | {band} | "
                  f"{_pct(above)} |", flush=True)


SM_METHODS = ("wilson", "jeffreys", "agresti_coull", "beta", "normal", "binom_test")


def methods_table() -> None:
    """Exact coverage of statsmodels' interval methods in every (p, n) cell, and how many cells
    each puts in the 93-97% band (p = 0.9, n = 12 cannot be: see the exact table)."""
    from statsmodels.stats.proportion import proportion_confint

    cells = [(p, n) for p in PS for n in NS]
    print("\n| method | " + " | ".join(f"p = {p}, n = {n}" for p, n in cells)
          + " | cells in 93–97% |")
    print("|---" * (len(cells) + 2) + "|")
    for method in SM_METHODS:
        def interval(k: int, n: int, method: str = method) -> tuple[float, float]:
            return proportion_confint(k, n, alpha=0.05, method=method)

        cov = [exact_coverage(p, n, interval=interval) for p, n in cells]
        print(f"| {method} | " + " | ".join(_pct(c) for c in cov)
              + f" | {sum(0.93 <= c <= 0.97 for c in cov)} of {len(cells)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=500, help="replicates per detector cell")
    ap.add_argument("--refine-reps", type=int, default=None, help="default: --reps")
    ap.add_argument("--coverage-reps", type=int, default=2000)
    ap.add_argument("--max-n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tables", default="detector,refine,coverage,exact",
                    help="which tables to print, comma-separated")
    args = ap.parse_args()
    tables = args.tables.split(",")
    start = time.perf_counter()
    print(f"replicates per cell: {args.reps} (refine: {args.refine_reps or args.reps}, "
          f"coverage: {args.coverage_reps}); seed {args.seed}\n")
    if "detector" in tables:
        detector_table(args.reps, args.seed)
    if "refine" in tables:
        refine_table(args.refine_reps or args.reps, args.seed, 12, args.max_n)
    if "coverage" in tables:
        coverage_table(args.coverage_reps, args.seed)
    if "exact" in tables:
        exact_table()
    if "methods" in tables:
        methods_table()
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
