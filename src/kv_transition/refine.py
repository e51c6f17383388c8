"""`kv-transition refine`: add examples only to the length bins whose verdict is inconclusive.

One round: finish any pending work (run, score, analyze: all resumable), read the verdicts,
double the inconclusive bins (and the reference bins they were compared with) up to
``analysis.max_n_per_bin``, and record the round in ``refine_rounds`` in the same transaction
that adds the examples. The next round's `run` then answers only the new requests, for every
setting. Refine stops when no bin is inconclusive, every such bin is at the maximum, or the
planned number of looks is used up: the detector spends alpha / looks on every analysis, so
the false-alarm rate over all looks stays at alpha (analysis/transition.py).

New examples come from the same source as prepare's: the synthetic generator makes more (the
same seed scheme, more indices; ids already in the database are skipped), a file-backed
dataset draws from the examples prepare held back. A candidate joins the bin whose token range
holds its prompt length, in a seeded order, so a rerun picks the same examples.
"""

from __future__ import annotations

import json
import random
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kv_transition import paths, pipeline
from kv_transition.analysis import queries
from kv_transition.analysis.transition import growth_plan, planned_looks
from kv_transition.data.binning import cluster_of
from kv_transition.data.manifest import manifest_from_db, manifest_hash, save_manifest_json
from kv_transition.data.prompt import prompt_tokens
from kv_transition.db.connect import transaction
from kv_transition.engines.tokenizer import load_counter
from kv_transition.errors import BadInput

Row = dict


@dataclass
class RefineResult:
    rounds: list[dict[int, tuple[int, int]]] = field(default_factory=list)  # bin: (before, after)
    stop: str = ""


def _max_n(exp: pipeline.Experiment) -> int:
    max_n = exp.settings.analysis.max_n_per_bin
    if max_n is None:
        raise BadInput("analysis.max_n_per_bin: refine needs the most examples a bin may grow "
                       "to, e.g. --set analysis.max_n_per_bin=48")
    if max_n <= exp.settings.dataset.n_per_bin:
        raise BadInput(f"analysis.max_n_per_bin ({max_n}) must be above dataset.n_per_bin "
                       f"({exp.settings.dataset.n_per_bin}): there is no room to refine")
    return max_n


def _bin_sizes(conn: sqlite3.Connection, ds_id: str) -> dict[int, int]:
    """Contexts per bin (the unit n_per_bin and max_n_per_bin count): several questions of
    one context (``dataset.questions_per_context``) are one."""
    return {r[0]: r[1] for r in conn.execute(
        "SELECT b.bin_idx, COUNT(DISTINCT COALESCE(json_extract(e.meta_json, '$.cluster'), "
        "e.example_id)) FROM bins b LEFT JOIN manifest_entries m "
        "ON m.dataset_id = b.dataset_id AND m.bin_idx = b.bin_idx LEFT JOIN examples e "
        "ON e.dataset_id = m.dataset_id AND e.example_id = m.example_id WHERE b.dataset_id = ? "
        "GROUP BY b.bin_idx", (ds_id,))}


def _rounds_done(conn: sqlite3.Connection, ds_id: str) -> int:
    return conn.execute("SELECT COUNT(DISTINCT round) FROM refine_rounds WHERE dataset_id = ?",
                        (ds_id,)).fetchone()[0]


def _candidates(exp: pipeline.Experiment, conn: sqlite3.Connection, ds_id: str) -> list:
    """(example, prompt tokens) from the dataset's source that are not in the database yet."""
    settings = exp.settings
    if settings.dataset.name == "synthetic":  # enough indices to fill every bin to the max
        dataset = settings.dataset.model_copy(update={"n_per_bin": _max_n(exp)})
        settings = settings.model_copy(update={"dataset": dataset})
    count, _ = load_counter(exp.settings, paths.models_dir(exp.root))
    have = {r[0] for r in conn.execute("SELECT example_id FROM examples WHERE dataset_id = ?",
                                       (ds_id,))}
    return [(ex, prompt_tokens(ex, count)) for ex in pipeline.load_examples(settings, count)
            if ex.example_id not in have]


def _home_bin(bins: list[Row], n_tokens: int) -> int | None:
    """The bin whose token range holds n_tokens; else the nearest one within the synthetic
    generator's length tolerance (a bin's observed range is only as wide as its sample)."""
    def gap(b: Row) -> int:
        return max(b["token_min"] - n_tokens, n_tokens - b["token_max"], 0)
    best = min(bins, key=gap, default=None)
    if best is None or gap(best) > max(8, int(0.02 * n_tokens)):
        return None
    return best["bin_idx"]


def _pick(candidates: list, bins: list[Row], grow: dict[int, int], sizes: dict[int, int],
          seed: int) -> dict[int, list]:
    """The new examples of each growing bin: contexts in its token range, seeded order, each
    with the further questions asked of it (``dataset.questions_per_context``)."""
    by_bin: dict[int, list] = {b: [] for b in grow}
    more: dict[str, list] = {}
    for ex, n_tokens in sorted(candidates, key=lambda c: c[0].example_id):
        if cluster_of(ex) != ex.example_id:
            more.setdefault(cluster_of(ex), []).append((ex, n_tokens))
            continue
        home = _home_bin(bins, n_tokens)
        if home in by_bin:
            by_bin[home].append((ex, n_tokens))
    for b, pool in by_bin.items():
        random.Random(f"{seed}-bin-{b}-refine").shuffle(pool)
        by_bin[b] = [q for first in pool[:grow[b] - sizes[b]]
                     for q in [first, *more.get(first[0].example_id, [])]]
    return by_bin


def _add_round(conn: sqlite3.Connection, ds_id: str, picked: dict[int, list],
               sizes: dict[int, int], round_no: int) -> dict[int, tuple[int, int]]:
    now = datetime.now(timezone.utc).isoformat()
    contexts = {b: sum(cluster_of(ex) == ex.example_id for ex, _ in new)
                for b, new in picked.items()}
    grown = {b: (sizes[b], sizes[b] + contexts[b]) for b, new in picked.items() if new}
    with transaction(conn):
        for b, new in picked.items():
            for ex, n_tokens in new:
                meta = {**ex.meta, "answer_prefix": ex.answer_prefix}
                conn.execute(
                    "INSERT INTO examples(example_id, dataset_id, question, context, "
                    "answers_json, meta_json, token_len) VALUES (?,?,?,?,?,?,?)",
                    (ex.example_id, ds_id, ex.question, ex.context, json.dumps(ex.answers),
                     json.dumps(meta), n_tokens))
                conn.execute("INSERT INTO manifest_entries(dataset_id, example_id, bin_idx) "
                             "VALUES (?,?,?)", (ds_id, ex.example_id, b))
        for b, (before, after) in grown.items():
            conn.execute("UPDATE bins SET n_examples = n_examples + ? WHERE dataset_id = ? AND "
                         "bin_idx = ?", (len(picked[b]), ds_id, b))
            conn.execute("INSERT INTO refine_rounds VALUES (?,?,?,?,?,?)",
                         (ds_id, round_no, b, before, after, now))
        if grown:  # the manifest now has more entries: its hash must say so
            conn.execute("UPDATE datasets SET manifest_hash = ? WHERE dataset_id = ?",
                         (manifest_hash(manifest_from_db(conn, ds_id)), ds_id))
    return grown


def _complete(exp: pipeline.Experiment, show_progress: bool) -> None:
    """Run, score and analyze whatever is pending; each step skips what is done."""
    pipeline.run(exp, show_progress=show_progress)
    pipeline.score(exp)
    pipeline.analyze(exp)


def refine(exp: pipeline.Experiment, show_progress: bool = True) -> RefineResult:
    """Grow inconclusive bins until the verdicts are decisive or the budget is spent."""
    max_n = _max_n(exp)
    conn = exp.connect(must_exist=True)
    ds_id = pipeline.current_dataset(conn, exp)
    looks = planned_looks(exp.settings.dataset.n_per_bin, max_n)
    result = RefineResult()
    while True:
        _complete(exp, show_progress)
        done = _rounds_done(conn, ds_id)
        if done >= looks - 1:
            result.stop = f"all {looks} planned looks used"
            return result
        rationales = [t["rationale"] for t in queries.transition_rows(conn, exp.exp_id)]
        sizes = _bin_sizes(conn, ds_id)
        grow = growth_plan(rationales, sizes, max_n)
        if not grow:
            result.stop = "decisive: no bin is inconclusive below analysis.max_n_per_bin"
            return result
        picked = _pick(_candidates(exp, conn, ds_id), queries.bins_of_dataset(conn, ds_id),
                       grow, sizes, exp.settings.dataset.seed)
        grown = _add_round(conn, ds_id, picked, sizes, done + 1)
        if not grown:
            result.stop = "the source has no more examples for the inconclusive bins"
            return result
        result.rounds.append(grown)
        save_manifest_json(manifest_from_db(conn, ds_id), paths.manifest_path(exp.root, ds_id))
