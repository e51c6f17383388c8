"""Build the served engine and run it under uvicorn, in the foreground or (for tests) a thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import uvicorn

from kv_transition import paths
from kv_transition.engines.factory import make_engine
from kv_transition.serve.app import ServerState, create_app
from kv_transition.serve.metrics import ServerMetrics
from kv_transition.serve.options import ServeOptions, resolve_options
from kv_transition.serve.worker import ModelWorker
from kv_transition.settings import EngineConfig, Settings


def load_engine(settings: Settings, home: Path, warm: tuple[str, float] = ("full", 1.0)) -> Any:
    """The in-process engine the config describes, built as `run` builds it for engine.kind hf
    (so whatever the factory adds, quantized caches included, is served too)."""
    hf_settings = settings.model_copy(update={"engine": EngineConfig(kind="hf")})
    engine = make_engine(hf_settings, paths.models_dir(home), [])
    engine.warmup(*warm)  # lazy init (and the press's imports) off the first request's clock
    return engine


def build_state(engine: Any, settings: Settings, options: ServeOptions) -> ServerState:
    return ServerState(
        model_id=settings.model.name, options=options,
        worker=ModelWorker(engine, options.max_queue),
        metrics=ServerMetrics(settings.model.name, options.describe()),
        decoding=settings.decoding, query_aware=settings.kv.query_aware,
        use_chat_template=bool(getattr(engine, "use_chat", False)), created=int(time.time()))


def serve_forever(settings: Settings, home: Path, announce: Callable[[str], Any] = print,
                  **flags: Any) -> None:
    """``kv-transition serve``: blocks until Ctrl-C / SIGTERM."""
    options = resolve_options(settings.serve, **flags)  # BadInput before the model loads
    engine = load_engine(settings, home, (options.policy or "full", options.budget or 1.0))
    state = build_state(engine, settings, options)
    config = uvicorn.Config(create_app(state), host=options.host, port=options.port,
                            log_level="warning", access_log=False, lifespan="off")
    announce(f"serving {settings.model.name} at http://{options.host}:{options.port}/v1 "
             f"({options.describe()}); Ctrl-C stops")
    try:
        uvicorn.Server(config).run()
    finally:
        state.worker.stop()
        engine.close()


class ServerThread:
    """The same app on a loopback port in a background thread (tests, benchmarks)."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", port: int = 0):
        self.state = state
        config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                                access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    @property
    def base_url(self) -> str:
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self.state.worker.stop()
