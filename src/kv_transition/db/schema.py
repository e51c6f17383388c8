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

# KV novelty probes (issue 8). layer/head -1 mean "not per layer" (predictive metrics) and
# "all selected heads concatenated"; series are JSON arrays with null where undefined.
SCHEMA_V3_NOVELTY = """
CREATE TABLE novelty_runs (
    novelty_run_id  INTEGER PRIMARY KEY,
    exp_group_id    TEXT NOT NULL REFERENCES experiments(exp_group_id),
    prompt_id       TEXT NOT NULL,
    prompt_kind     TEXT NOT NULL,
    model_name      TEXT NOT NULL,
    target          TEXT NOT NULL,
    temperature     REAL NOT NULL,
    seed            INTEGER NOT NULL,
    capture_hash    TEXT NOT NULL,
    status          TEXT NOT NULL,
    n_prompt_tokens INTEGER NOT NULL,
    n_generated     INTEGER,
    finish_reason   TEXT,
    text            TEXT,
    store           TEXT NOT NULL,
    store_path      TEXT,
    meta_json       TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL,
    UNIQUE (exp_group_id, prompt_id)
);
CREATE TABLE novelty_tokens (
    novelty_run_id INTEGER NOT NULL REFERENCES novelty_runs(novelty_run_id) ON DELETE CASCADE,
    position       INTEGER NOT NULL,
    token_id       INTEGER NOT NULL,
    token_text     TEXT NOT NULL,
    generated      INTEGER NOT NULL,
    logprob        REAL,
    entropy        REAL,
    transition     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (novelty_run_id, position)
);
CREATE TABLE novelty_kv (
    novelty_run_id INTEGER NOT NULL REFERENCES novelty_runs(novelty_run_id) ON DELETE CASCADE,
    layer          INTEGER NOT NULL,
    target         TEXT NOT NULL,
    position       INTEGER NOT NULL,
    vector         BLOB NOT NULL,
    PRIMARY KEY (novelty_run_id, layer, target, position)
);
CREATE TABLE novelty_series (
    novelty_run_id INTEGER NOT NULL REFERENCES novelty_runs(novelty_run_id) ON DELETE CASCADE,
    layer          INTEGER NOT NULL,
    head           INTEGER NOT NULL,
    metric         TEXT NOT NULL,
    values_json    TEXT NOT NULL,
    PRIMARY KEY (novelty_run_id, layer, head, metric)
);
CREATE TABLE novelty_stats (
    novelty_run_id INTEGER NOT NULL REFERENCES novelty_runs(novelty_run_id) ON DELETE CASCADE,
    layer          INTEGER NOT NULL,
    head           INTEGER NOT NULL,
    metric         TEXT NOT NULL,
    segment_start  INTEGER NOT NULL,
    n              INTEGER NOT NULL,
    mean           REAL,
    std            REAL,
    kurtosis       REAL,
    skew           REAL,
    n_spikes       INTEGER NOT NULL,
    burstiness     REAL,
    acf_lag1       REAL,
    acf_band       REAL,
    uniformity_p   REAL,
    n_transitions  INTEGER NOT NULL,
    transition_hits INTEGER,
    transition_expected REAL,
    transition_p   REAL,
    spikes_json    TEXT NOT NULL,
    acf_json       TEXT NOT NULL,
    PRIMARY KEY (novelty_run_id, layer, head, metric)
);
CREATE TABLE novelty_compression (
    novelty_run_id INTEGER NOT NULL REFERENCES novelty_runs(novelty_run_id) ON DELETE CASCADE,
    layer          INTEGER NOT NULL,
    head           INTEGER NOT NULL,
    metric         TEXT NOT NULL,
    kv_policy      TEXT NOT NULL,
    kv_budget      REAL NOT NULL,
    n_positions    INTEGER NOT NULL,
    n_high         INTEGER NOT NULL,
    kept_frac_all  REAL,
    kept_frac_high REAL,
    spearman_rho   REAL,
    spearman_p     REAL,
    PRIMARY KEY (novelty_run_id, layer, head, metric, kv_policy, kv_budget)
);
"""

# The functional canary (issue 5): sandbox / tool-call sub-scores per answer, perplexity per
# run and held-out window, and the Silent Degradation Score per compressed run.
SCHEMA_V4_CANARY = """
CREATE TABLE functional_scores (
    request_id   INTEGER PRIMARY KEY REFERENCES requests(request_id),
    kind         TEXT NOT NULL,
    passed       INTEGER NOT NULL,
    exit_code    INTEGER,
    timed_out    INTEGER,
    duration_s   REAL,
    sandbox      TEXT,
    stderr_tail  TEXT,
    valid_json   INTEGER,
    name_ok      INTEGER,
    args_exact   INTEGER,
    args_match   REAL,
    schema_valid INTEGER
);
CREATE TABLE perplexity (
    run_id        INTEGER NOT NULL REFERENCES runs(run_id),
    text_id       TEXT NOT NULL,
    text_hash     TEXT NOT NULL,
    prefix_tokens INTEGER NOT NULL,
    n_tokens      INTEGER NOT NULL,
    nll_sum       REAL NOT NULL,
    kv_bytes      INTEGER,
    kv_bytes_full INTEGER,
    seconds       REAL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (run_id, text_id)
);
CREATE TABLE sds (
    run_id          INTEGER PRIMARY KEY REFERENCES runs(run_id),
    baseline_run_id INTEGER NOT NULL REFERENCES runs(run_id),
    n_items         INTEGER NOT NULL,
    n_texts         INTEGER NOT NULL,
    f_full          REAL,
    f_comp          REAL,
    ppl_full        REAL,
    ppl_comp        REAL,
    func_drop       REAL,
    ppl_rise        REAL,
    sds             REAL,
    sds_ci_low      REAL,
    sds_ci_high     REAL,
    kv_retained     REAL,
    kv_retained_ppl REAL,
    verdict         TEXT NOT NULL,
    detail_json     TEXT NOT NULL DEFAULT '{}'
);
"""

# Issue 13: the method beside every interval, the paired test against the full cache, the
# counts the transition test needs, the verdict's test and p-value, and refine's rounds (each
# round's new examples are recorded in the same transaction that adds them, so a killed
# `refine` resumes and the number of looks stays known).
SCHEMA_V5_STATISTICS = """
ALTER TABLE bin_stats ADD COLUMN acc_ci_method TEXT;
ALTER TABLE bin_stats ADD COLUMN fail_ci_low REAL;
ALTER TABLE bin_stats ADD COLUMN fail_ci_high REAL;
ALTER TABLE bin_stats ADD COLUMN fail_ci_method TEXT;
ALTER TABLE bin_stats ADD COLUMN acc_delta_ci_method TEXT;
ALTER TABLE bin_stats ADD COLUMN acc_delta_p REAL;
ALTER TABLE bin_stats ADD COLUMN acc_delta_test TEXT;
ALTER TABLE bin_stats ADD COLUMN n_paired INTEGER;
ALTER TABLE bin_stats ADD COLUMN changed_rate REAL;
ALTER TABLE bin_stats ADD COLUMN n_clusters INTEGER;
ALTER TABLE transition_summary ADD COLUMN verdict TEXT;
ALTER TABLE transition_summary ADD COLUMN test TEXT;
ALTER TABLE transition_summary ADD COLUMN statistic REAL;
ALTER TABLE transition_summary ADD COLUMN p_value REAL;
ALTER TABLE transition_summary ADD COLUMN p_adjusted REAL;
ALTER TABLE transition_summary ADD COLUMN reference_bin INTEGER;
CREATE TABLE refine_rounds (
    dataset_id  TEXT NOT NULL REFERENCES datasets(dataset_id),
    round       INTEGER NOT NULL,
    bin_idx     INTEGER NOT NULL,
    n_before    INTEGER NOT NULL,
    n_after     INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (dataset_id, round, bin_idx)
);
"""

# (version, name, SQL). Append only.
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "initial schema", SCHEMA_V1),
    (2, "quant validation", """
-- `kv-transition quant-validate` (issue 4): one row per mode x policy x context length x layer.
-- layer -1 is the aggregate over layers; memory mode has no model and only ratios.
CREATE TABLE quant_validation (
    exp_group_id   TEXT NOT NULL REFERENCES experiments(exp_group_id),
    mode           TEXT NOT NULL,
    policy         TEXT NOT NULL,
    context_tokens INTEGER NOT NULL,
    layer          INTEGER NOT NULL,
    model_name     TEXT,
    head_dim       INTEGER NOT NULL,
    group_size     INTEGER NOT NULL,
    residual_length INTEGER NOT NULL,
    payload_ratio  REAL,
    true_ratio     REAL,
    rel_mse_k      REAL,
    rel_mse_v      REAL,
    max_err_k      REAL,
    max_err_v      REAL,
    attn_rel_err   REAL,
    params_json    TEXT NOT NULL DEFAULT '{}',
    created_at     TEXT NOT NULL,
    PRIMARY KEY (exp_group_id, mode, policy, context_tokens, layer)
);
"""),
    (3, "novelty probes", SCHEMA_V3_NOVELTY),
    (4, "functional canary", SCHEMA_V4_CANARY),
    (5, "calibrated statistics", SCHEMA_V5_STATISTICS),
    (6, "request leases", """
-- Several `run` workers on one experiment (issue 15, run/leases.py): a worker claims a pending
-- request by holding its lease until it records the answer; a lease past expires_at (unix
-- seconds) is free again, so a killed worker's claims return to the pool.
CREATE TABLE leases (
    request_id  INTEGER PRIMARY KEY REFERENCES requests(request_id),
    worker      TEXT NOT NULL,
    expires_at  REAL NOT NULL
);
CREATE INDEX leases_by_worker ON leases(worker);
-- a claim walks pending requests in entry order and stops after a few entries
CREATE INDEX requests_by_entry ON requests(entry_id, run_id);
"""),
    (7, "integrity checks", """
-- Each compressing policy's integration with the model, checked before its requests run
-- (issue 16, engines/integrity.py): sliding-window layers left alone, the press applied at
-- all, a mild budget close to the full cache. A failed check is exit 2 and is not stored.
CREATE TABLE integrity_checks (
    exp_group_id TEXT NOT NULL REFERENCES experiments(exp_group_id),
    model_name   TEXT NOT NULL,
    kv_policy    TEXT NOT NULL,
    model_class  TEXT NOT NULL,
    passed       INTEGER NOT NULL,
    checks_json  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (exp_group_id, model_name, kv_policy)
);
"""),
]

TABLES = (
    "experiments", "datasets", "examples", "bins", "manifest_entries", "runs", "requests",
    "responses", "telemetry", "scores", "failures", "bin_stats", "transition_summary",
    "integrity_checks",
)
