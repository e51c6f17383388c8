"""End to end: `kv-transition serve` as a real process on a free loopback port, the experiment
run through the `openai` engine against it, compared with the in-process `hf` engine on the
same manifest: the same greedy answers (token for token) and the same scores."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time

import httpx
from typer.testing import CliRunner

from kv_transition.cli import app
from kv_transition.engines.builtin import resolve_builtin
from kvt_testkit import TINY_CONFIG, write_config

ROWS = """
SELECT u.kv_policy, u.kv_budget, m.example_id, s.text, s.finish_reason, s.completion_tokens,
       s.raw_json, c.em, c.f1, c.acc, f.failure_type
FROM responses s JOIN requests r USING(request_id) JOIN runs u USING(run_id)
JOIN manifest_entries m ON m.entry_id = r.entry_id
LEFT JOIN scores c USING(request_id) LEFT JOIN failures f USING(request_id)
ORDER BY 1, 2, 3"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_and_score(config) -> None:
    for phase in ("prepare", "run", "score"):
        args = [phase, "-c", str(config)] + (["--no-progress"] if phase == "run" else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output


def wait_until_healthy(proc: subprocess.Popen, port: int, log, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("serve did not become healthy")


def rows(home, exp: str, sql: str = ROWS) -> list[tuple]:
    conn = sqlite3.connect(home / "runs" / exp / "kv_transition.sqlite")
    return conn.execute(sql).fetchall()


def dataset_ids(home, exp: str) -> list[str]:
    return [r[0] for r in rows(home, exp, "SELECT dataset_id FROM datasets")]


def token_ids(raw_json: str) -> list[int]:
    raw = json.loads(raw_json)
    return raw["token_ids"] if "token_ids" in raw else raw["kv_telemetry"]["token_ids"]


def test_openai_engine_against_serve_matches_the_hf_engine(home, tmp_path):
    hf_cfg = write_config(tmp_path / "hf.yaml", output={"exp_group_id": "tiny_hf"})
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as err:  # a file, not a pipe: a full pipe would block the server
        server = subprocess.Popen(
            [sys.executable, "-m", "kv_transition", "serve", "-c", str(hf_cfg), "--port",
             str(port)], stdout=subprocess.DEVNULL, stderr=err)
    try:
        run_and_score(hf_cfg)  # the in-process run, while the server loads
        wait_until_healthy(server, port, log)
        # the client counts tokens with the same tokenizer, so the manifest is the same
        tokenizer = str(resolve_builtin("builtin:tiny-random", home.resolve() / "data" / "models"))
        client = {"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                  "send_kv_params": True, "concurrency": 4,
                  "request": {"timeout_s": 60, "max_retries": 1, "backoff_s": 0.1}}
        model = {**TINY_CONFIG["model"], "tokenizer": tokenizer}
        chat_cfg = write_config(tmp_path / "chat.yaml", model=model, engine=client,
                                output={"exp_group_id": "tiny_chat"})
        run_and_score(chat_cfg)
        plain_cfg = write_config(tmp_path / "plain.yaml", model=model, engine={
            **client, "endpoint": "completions", "stream": False},
            output={"exp_group_id": "tiny_plain"})
        run_and_score(plain_cfg)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None  # it stopped on SIGTERM (uvicorn re-raises it)

    assert dataset_ids(home, "tiny_hf") == dataset_ids(home, "tiny_chat") == \
        dataset_ids(home, "tiny_plain")
    want = rows(home, "tiny_hf")
    assert len(want) == 3 * 6  # full + snapkv@0.5 + streamingllm@0.5, 6 examples
    for exp in ("tiny_chat", "tiny_plain"):
        got = rows(home, exp)
        assert [r[:6] + r[7:] for r in got] == [r[:6] + r[7:] for r in want], exp
        assert [token_ids(r[6]) for r in got] == [token_ids(r[6]) for r in want], exp
        # the server says what it applied, and it is what the hf engine applied
        assert [json.loads(r[6])["kv_telemetry"]["applied"] for r in got] == \
            [json.loads(r[6])["applied"] for r in want]
    assert 'kvt_requests_total{endpoint="chat",status="200"}' in metrics
    assert 'kvt_requests_total{endpoint="completions",status="200"}' in metrics


def test_serve_rejects_bad_options_before_loading_anything(home, tiny_config, monkeypatch):
    monkeypatch.delenv("KVT_NO_SUCH_KEY", raising=False)
    for args, message in ((["--budget", "1.5"], "--budget"),
                          (["--policy", "nope"], "'nope': unknown policy"),
                          (["--api-key-env", "KVT_NO_SUCH_KEY"], "KVT_NO_SUCH_KEY")):
        result = CliRunner().invoke(app, ["serve", "-c", str(tiny_config), *args])
        assert result.exit_code == 2 and message in result.output, result.output
