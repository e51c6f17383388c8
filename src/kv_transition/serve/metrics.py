"""Prometheus metrics for the server, in the text exposition format (version 0.0.4).

A handful of counters and histograms, written out by hand: the format is a few lines of text
and a client library would be one more dependency for it. Everything is observed from the event
loop thread; the lock only guards against a scrape rendering while a request records.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = SECONDS_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}'
               for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        wrap = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{wrap} {_num(self.sum)}", f"{name}_count{wrap} {self.count}"]
        return out


class ServerMetrics:
    def __init__(self, model: str, options_text: str):
        self._lock = threading.Lock()
        self._info = {"model": model, "kv": options_text}
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.durations: dict[str, Histogram] = defaultdict(Histogram)
        self.queue_wait = Histogram()
        self.prefill = Histogram()
        self.ttft = Histogram()
        self.totals = {"prompt_tokens": 0, "completion_tokens": 0, "kv_bytes": 0,
                       "kv_bytes_uncompressed": 0}
        self.in_progress = 0

    def started(self) -> None:
        with self._lock:
            self.in_progress += 1

    def finished(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_progress -= 1
            self.requests[(endpoint, status)] += 1
            self.durations[endpoint].observe(seconds)

    def generated(self, telemetry: dict[str, Any], completion_tokens: int) -> None:
        with self._lock:
            for hist, key in ((self.queue_wait, "queue_s"), (self.prefill, "prefill_s"),
                              (self.ttft, "ttft_s")):
                if isinstance(telemetry.get(key), (int, float)):
                    hist.observe(float(telemetry[key]))
            self.totals["prompt_tokens"] += int(telemetry.get("prompt_tokens") or 0)
            self.totals["completion_tokens"] += completion_tokens
            self.totals["kv_bytes"] += int(telemetry.get("kv_bytes") or 0)
            self.totals["kv_bytes_uncompressed"] += int(
                telemetry.get("kv_bytes_uncompressed") or 0)

    def render(self, queue_depth: int) -> str:
        with self._lock:
            return "\n".join(self._lines(queue_depth)) + "\n"

    def _lines(self, queue_depth: int) -> list[str]:
        info = ",".join(f'{k}="{_escape(v)}"' for k, v in self._info.items())
        out = _head("kvt_info", "gauge", "The served model and KV setting.")
        out.append(f"kvt_info{{{info}}} 1")
        out += _head("kvt_requests_total", "counter", "HTTP requests answered, by endpoint "
                     "and status.")
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(f'kvt_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        out += _head("kvt_request_duration_seconds", "histogram", "Time from request to the "
                     "last byte of the answer.")
        for endpoint, hist in sorted(self.durations.items()):
            out += hist.lines("kvt_request_duration_seconds", f'endpoint="{endpoint}"')
        for name, hist, help_ in (
                ("kvt_queue_wait_seconds", self.queue_wait, "Wait before the model took the "
                 "request."),
                ("kvt_prefill_seconds", self.prefill, "Prompt processing, compression included."),
                ("kvt_time_to_first_token_seconds", self.ttft, "Prefill plus the first token.")):
            out += _head(name, "histogram", help_) + hist.lines(name)
        for key, help_ in (("prompt_tokens", "Prompt tokens processed."),
                           ("completion_tokens", "Tokens generated."),
                           ("kv_bytes", "KV cache bytes held after compression, summed over "
                            "requests."),
                           ("kv_bytes_uncompressed", "KV cache bytes the full cache would have "
                            "held, summed over requests.")):
            out += _head(f"kvt_{key}_total", "counter", help_)
            out.append(f"kvt_{key}_total {self.totals[key]}")
        out += _head("kvt_requests_in_progress", "gauge", "Requests being answered now.")
        out.append(f"kvt_requests_in_progress {self.in_progress}")
        out += _head("kvt_queue_depth", "gauge", "Requests waiting for or holding the model.")
        out.append(f"kvt_queue_depth {queue_depth}")
        return out


def _head(name: str, kind: str, help_: str) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else f"{value:.1f}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
