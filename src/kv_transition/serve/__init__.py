"""`kv-transition serve`: an OpenAI-compatible HTTP server that applies KV compression.

It wraps the in-process ``hf`` engine, so any OpenAI client (this project's ``openai`` engine
included) gets answers computed under a policy and budget (``kv_policy``/``kv_budget`` in the
body, or fixed at start) with a ``kv_telemetry`` field saying what was applied and measured.
Modules: ``protocol`` (wire format), ``prompting`` (prompt -> engine request), ``options``
(server and per-request KV settings), ``worker`` (the one thread that owns the model),
``streaming`` (token deltas), ``metrics``
(Prometheus), ``app`` (routes), ``server`` (uvicorn).
"""
