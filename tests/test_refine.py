"""`refine` on a real tiny experiment: only inconclusive bins grow, resumably, no duplicates."""

import sqlite3

from kvt_testkit import TINY_CONFIG, write_config
from test_cli import cli, db_file, dump, row_counts


def _config(tmp_path, **analysis):
    # inconclusive_p near 1: on the random-weight model every measurable rise is "suggestive",
    # so the test exercises growth without a trained model
    return write_config(tmp_path / "refine.yaml",
                        analysis={**TINY_CONFIG["analysis"], "inconclusive_p": 0.999,
                                  **analysis})


def _sizes(path):
    conn = sqlite3.connect(path)
    return dict(conn.execute("SELECT bin_idx, COUNT(*) FROM manifest_entries GROUP BY bin_idx"))


def _one_right_answer_in_bin_0(home):
    conn = sqlite3.connect(db_file(home), isolation_level=None)
    # the random-weight model fails every request in both bins: give one compressed request in
    # the reference bin 0 the gold answer, so bin 1's failure rate is (a little) higher and
    # bin 1 becomes inconclusive once rescored
    conn.execute(
        "UPDATE responses SET text = (SELECT json_extract(e.answers_json, '$[0]') FROM requests q "
        "JOIN manifest_entries m USING (entry_id) JOIN examples e USING (dataset_id, example_id) "
        "WHERE q.request_id = responses.request_id), finish_reason = 'stop' "
        "WHERE request_id = (SELECT q.request_id FROM requests q JOIN runs r USING (run_id) "
        "JOIN manifest_entries m USING (entry_id) WHERE r.kv_policy = 'snapkv' AND "
        "m.bin_idx = 0 ORDER BY q.request_id LIMIT 1)")
    return conn


def test_refine_grows_only_inconclusive_bins_and_resumes(home, tmp_path):
    cfg = _config(tmp_path, max_n_per_bin=6)
    assert cli("all", "-c", cfg).exit_code == 0
    conn = _one_right_answer_in_bin_0(home)
    assert cli("all", "-c", cfg).exit_code == 0
    before = _sizes(db_file(home))
    import json
    rationales = [json.loads(r[0]) for r in conn.execute(
        "SELECT rationale_json FROM transition_summary")]
    weak = {b for r in rationales for b in r.get("inconclusive_bins", [])}
    refs = {b for r in rationales if r.get("inconclusive_bins") for b in r["reference_bins"]}
    hash_before = conn.execute("SELECT manifest_hash FROM datasets").fetchone()[0]
    result = cli("refine", "-c", cfg, "--no-progress")
    assert result.exit_code == 0, result.output
    after = _sizes(db_file(home))
    # the grown manifest has a new hash, the hash of what it now holds
    from kv_transition.data.manifest import manifest_from_db, manifest_hash

    conn.row_factory = sqlite3.Row
    ds_id = conn.execute("SELECT dataset_id FROM datasets").fetchone()[0]
    stored = manifest_from_db(conn, ds_id)
    conn.row_factory = None
    assert stored["manifest_hash"] != hash_before
    assert stored["manifest_hash"] == manifest_hash(stored)
    grown = {b for b in after if after[b] > before[b]}
    assert grown and grown <= weak | refs  # nothing else grows
    assert all(after[b] <= 6 for b in after)
    rounds = conn.execute("SELECT bin_idx, n_before, n_after FROM refine_rounds").fetchall()
    assert {r[0] for r in rounds} == grown
    counts = row_counts(db_file(home))
    # every setting answered every entry exactly once
    assert counts["requests"] == counts["responses"] == counts["runs"] * sum(after.values())
    # a second refine: the planned looks (3 -> 6: two) are used up; nothing is added
    snapshot = row_counts(db_file(home))
    again = cli("refine", "-c", cfg, "--no-progress")
    assert again.exit_code == 0 and "looks used" in again.output
    assert row_counts(db_file(home)) == snapshot
    assert "refine_rounds" not in snapshot  # (the contract tables only)


def test_refine_without_a_maximum_is_bad_input_and_changes_nothing(home, tmp_path):
    cfg = _config(tmp_path)
    assert cli("all", "-c", cfg).exit_code == 0
    before = dump(db_file(home))
    result = cli("refine", "-c", cfg, "--no-progress")
    assert result.exit_code == 2 and "analysis.max_n_per_bin" in result.output
    assert dump(db_file(home)) == before


def test_refine_adds_whole_contexts_with_their_questions(home, tmp_path):
    cfg = write_config(tmp_path / "refine_q.yaml",
                       analysis={**TINY_CONFIG["analysis"], "inconclusive_p": 0.999,
                                 "max_n_per_bin": 6},
                       dataset={**TINY_CONFIG["dataset"], "task": "niah_multikey",
                                "lengths": [128, 256], "questions_per_context": 2})
    assert cli("all", "-c", cfg).exit_code == 0
    _one_right_answer_in_bin_0(home)
    assert cli("all", "-c", cfg).exit_code == 0
    assert _sizes(db_file(home)) == {0: 6, 1: 6}  # 3 contexts x 2 questions
    result = cli("refine", "-c", cfg, "--no-progress")
    assert result.exit_code == 0, result.output
    conn = sqlite3.connect(db_file(home))
    rows = conn.execute(
        "SELECT m.bin_idx, COALESCE(json_extract(e.meta_json, '$.cluster'), e.example_id) "
        "FROM manifest_entries m JOIN examples e USING (dataset_id, example_id)").fetchall()
    per_context: dict = {}
    for b, context in rows:
        per_context.setdefault((b, context), 0)
        per_context[(b, context)] += 1
    assert set(per_context.values()) == {2}  # no context without its second question
    grown = conn.execute("SELECT bin_idx, n_before, n_after FROM refine_rounds").fetchall()
    assert grown and all(before == 3 and 3 < after <= 6 for _, before, after in grown)
    assert dict(conn.execute("SELECT bin_idx, n_examples FROM bins")) == _sizes(db_file(home))
    counts = row_counts(db_file(home))
    assert counts["requests"] == counts["responses"] == counts["runs"] * len(rows)
