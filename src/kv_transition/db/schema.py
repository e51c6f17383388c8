"""The experiment database schema, as numbered migrations.

Migration 1 is the contract from DESIGN.md plus the columns the pipeline needs from day one.
Later issues append migrations to ``MIGRATIONS``; never edit an applied one.
"""

from __future__ import annotations

SCHEMA_V1 = """
CREATE TABLE experiments (
    exp_group_id TEXT PRIMARY KEY,
    created_at   TEXT NOT NULL,
    config_yaml  TEXT NOT NULL,
    git_hash     TEXT,
    notes        TEXT
);
CREATE TABLE datasets (
    dataset_id  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    task        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    tokenizer   TEXT,
    template_hash TEXT,
    manifest_hash TEXT
);
CREATE TABLE examples (
    example_id   TEXT NOT NULL,
    dataset_id   TEXT NOT NULL REFERENCES datasets(dataset_id),
    question     TEXT NOT NULL,
    context      TEXT NOT NULL,
    answers_json TEXT NOT NULL,
    meta_json    TEXT NOT NULL,
    token_len    INTEGER NOT NULL,
    PRIMARY KEY (dataset_id, example_id)
);
CREATE TABLE bins (
    bin_id      INTEGER PRIMARY KEY,
    dataset_id  TEXT NOT NULL REFERENCES datasets(dataset_id),
    bin_idx     INTEGER NOT NULL,
    token_min   INTEGER NOT NULL,
    token_max   INTEGER NOT NULL,
    n_examples  INTEGER NOT NULL,
    UNIQUE (dataset_id, bin_idx)
);
CREATE TABLE manifest_entries (
    entry_id    INTEGER PRIMARY KEY,
    dataset_id  TEXT NOT NULL REFERENCES datasets(dataset_id),
    example_id  TEXT NOT NULL,
    bin_idx     INTEGER NOT NULL,
    UNIQUE (dataset_id, example_id),
    FOREIGN KEY (dataset_id, example_id) REFERENCES examples(dataset_id, example_id)
);
CREATE TABLE runs (
    run_id       INTEGER PRIMARY KEY,
    exp_group_id TEXT NOT NULL REFERENCES experiments(exp_group_id),
    dataset_id   TEXT NOT NULL REFERENCES datasets(dataset_id),
    kv_policy    TEXT NOT NULL,
    kv_budget    REAL NOT NULL,
    engine_name  TEXT NOT NULL,
    base_url     TEXT,
    model_name   TEXT NOT NULL,
    query_aware  INTEGER NOT NULL DEFAULT 0,
    created_at   TEXT NOT NULL,
    UNIQUE (exp_group_id, dataset_id, kv_policy, kv_budget)
);
CREATE TABLE requests (
    request_id    INTEGER PRIMARY KEY,
    run_id        INTEGER NOT NULL REFERENCES runs(run_id),
    entry_id      INTEGER NOT NULL REFERENCES manifest_entries(entry_id),
    prompt_json   TEXT NOT NULL,
    prompt_tokens INTEGER,
    max_tokens    INTEGER NOT NULL,
    temperature   REAL NOT NULL,
    UNIQUE (run_id, entry_id)
);
CREATE TABLE responses (
    response_id       INTEGER PRIMARY KEY,
    request_id        INTEGER NOT NULL UNIQUE REFERENCES requests(request_id),
    text              TEXT NOT NULL,
    finish_reason     TEXT NOT NULL,
    completion_tokens INTEGER,
    raw_json          TEXT NOT NULL,
    created_at        TEXT NOT NULL
);
CREATE TABLE telemetry (
    request_id   INTEGER PRIMARY KEY REFERENCES requests(request_id),
    latency_s    REAL,
    ttfb_s       REAL,
    prefill_s    REAL,
    decode_s     REAL,
    peak_mem_mb  REAL,
    kv_bytes     INTEGER,
    notes_json   TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE scores (
    request_id  INTEGER PRIMARY KEY REFERENCES requests(request_id),
    em          REAL NOT NULL,
    f1          REAL NOT NULL,
    acc         REAL NOT NULL,
    metric      TEXT NOT NULL,
    pred_norm   TEXT NOT NULL,
    gold_norm   TEXT NOT NULL
);
CREATE TABLE failures (
    request_id   INTEGER PRIMARY KEY REFERENCES requests(request_id),
    failure_type TEXT NOT NULL,
    message      TEXT NOT NULL
);
CREATE TABLE bin_stats (
    run_id       INTEGER NOT NULL REFERENCES runs(run_id),
    bin_idx      INTEGER NOT NULL,
    n            INTEGER NOT NULL,
    acc_mean     REAL,
    acc_ci_low   REAL,
    acc_ci_high  REAL,
    acc_std      REAL,
    fail_rate    REAL,
    lat_p50      REAL,
    lat_p95      REAL,
    mem_p95      REAL,
    kv_bytes_mean REAL,
    acc_delta    REAL,
    acc_delta_ci_low  REAL,
    acc_delta_ci_high REAL,
    flip_rate    REAL,
    divergence   REAL,
    PRIMARY KEY (run_id, bin_idx)
);
CREATE TABLE transition_summary (
    run_id               INTEGER PRIMARY KEY REFERENCES runs(run_id),
    transition_bin_start INTEGER,
    transition_bin_end   INTEGER,
    rationale_json       TEXT NOT NULL
);
CREATE INDEX idx_requests_run ON requests(run_id);
CREATE INDEX idx_manifest_dataset ON manifest_entries(dataset_id, bin_idx);
"""

# (version, name, SQL). Append only.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", SCHEMA_V1),
]

TABLES = (
    "experiments", "datasets", "examples", "bins", "manifest_entries", "runs", "requests",
    "responses", "telemetry", "scores", "failures", "bin_stats", "transition_summary",
)
