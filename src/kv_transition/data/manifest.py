"""The manifest: the contract between prepare and run, in the DB and as manifest.json."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from kv_transition.data import prompt as prompt_tpl
from kv_transition.data.binning import Bin
from kv_transition.data.normalize import Example
from kv_transition.db.connect import transaction
from kv_transition.settings import Settings

MANIFEST_SCHEMA_VERSION = 1


def dataset_id(settings: Settings, tokenizer_id: str) -> str:
    """Stable id: the same source, sampling, tokenizer and template give the same dataset."""
    d = settings.dataset
    # every dataset field, so no setting can silently reuse a dataset made with another
    fields = d.model_dump(mode="json")
    # fields at their defaults that came later are left out: older datasets keep their ids
    if fields["tasks"] is None:
        del fields["tasks"]
    if fields["questions_per_context"] == 1:
        del fields["questions_per_context"]
    key = json.dumps({**fields, "n_bins": settings.binning.n_bins,
                      "tokenizer": tokenizer_id, "template": prompt_tpl.template_hash()},
                     sort_keys=True)
    return f"{d.name}-{d.task}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def build_manifest(ds_id: str, settings: Settings, tokenizer_id: str, bins: list[Bin],
                   lengths: dict[str, int]) -> dict:
    body = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "dataset_id": ds_id,
        "name": settings.dataset.name,
        "task": settings.dataset.task,
        "tokenizer": tokenizer_id,
        "prompt_template_version": prompt_tpl.PROMPT_TEMPLATE_VERSION,
        "prompt_template_hash": prompt_tpl.template_hash(),
        "seed": settings.dataset.seed,
        "n_per_bin": settings.dataset.n_per_bin,
        "bins": [{"bin_idx": b.bin_idx, "token_min": b.token_min, "token_max": b.token_max,
                  "pool": b.pool, "n_examples": len(b.members)} for b in bins],
        "entries": [{"example_id": ex, "bin_idx": b.bin_idx, "token_len": lengths[ex]}
                    for b in bins for ex in b.members],
    }
    body["manifest_hash"] = manifest_hash(body)
    return body


def manifest_hash(manifest: dict) -> str:
    """Identity of a manifest's content (its own hash field left out)."""
    body = {k: v for k, v in manifest.items() if k != "manifest_hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def write_manifest(conn: sqlite3.Connection, manifest: dict, examples: dict[str, Example],
                   json_path: Path) -> None:
    """Insert datasets/examples/bins/manifest_entries in one transaction, then the JSON copy."""
    ds_id = manifest["dataset_id"]
    now = datetime.now(timezone.utc).isoformat()
    with transaction(conn):
        conn.execute(
            "INSERT INTO datasets(dataset_id, name, task, created_at, tokenizer, template_hash, "
            "manifest_hash) VALUES (?,?,?,?,?,?,?)",
            (ds_id, manifest["name"], manifest["task"], now, manifest["tokenizer"],
             manifest["prompt_template_hash"], manifest["manifest_hash"]))
        for entry in manifest["entries"]:
            ex = examples[entry["example_id"]]
            meta = {**ex.meta, "answer_prefix": ex.answer_prefix}
            conn.execute(
                "INSERT INTO examples(example_id, dataset_id, question, context, answers_json, "
                "meta_json, token_len) VALUES (?,?,?,?,?,?,?)",
                (ex.example_id, ds_id, ex.question, ex.context, json.dumps(ex.answers),
                 json.dumps(meta), entry["token_len"]))
            conn.execute(
                "INSERT INTO manifest_entries(dataset_id, example_id, bin_idx) VALUES (?,?,?)",
                (ds_id, ex.example_id, entry["bin_idx"]))
        for b in manifest["bins"]:
            conn.execute(
                "INSERT INTO bins(dataset_id, bin_idx, token_min, token_max, n_examples) "
                "VALUES (?,?,?,?,?)",
                (ds_id, b["bin_idx"], b["token_min"], b["token_max"], b["n_examples"]))
    save_manifest_json(manifest, json_path)


def save_manifest_json(manifest: dict, json_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(json_path)


def manifest_from_db(conn: sqlite3.Connection, ds_id: str) -> dict:
    """Rebuild manifest.json from the database alone (files are derived)."""
    ds = conn.execute("SELECT * FROM datasets WHERE dataset_id=?", (ds_id,)).fetchone()
    bins = [dict(r) for r in conn.execute(
        "SELECT bin_idx, token_min, token_max, n_examples FROM bins WHERE dataset_id=? "
        "ORDER BY bin_idx", (ds_id,))]
    entries = [dict(r) for r in conn.execute(
        "SELECT m.entry_id, m.example_id, m.bin_idx, e.token_len FROM manifest_entries m "
        "JOIN examples e USING(dataset_id, example_id) WHERE m.dataset_id=? ORDER BY m.entry_id",
        (ds_id,))]
    return {"schema_version": MANIFEST_SCHEMA_VERSION, "dataset_id": ds_id, "name": ds["name"],
            "task": ds["task"], "tokenizer": ds["tokenizer"],
            "prompt_template_hash": ds["template_hash"], "manifest_hash": ds["manifest_hash"],
            "bins": bins, "entries": entries}
