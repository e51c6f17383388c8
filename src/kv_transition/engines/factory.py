"""Build the engine a config names; BadInput surfaces here, before any run row is written."""

from __future__ import annotations

from pathlib import Path

from kv_transition.engines.endpoints import resolve_base_url
from kv_transition.engines.tokenizer import load_tokenizer
from kv_transition.policy.spec import Setting
from kv_transition.settings import Settings


def make_engine(settings: Settings, models_root: Path, grid: list[Setting]):
    if settings.engine.kind == "hf":
        from kv_transition.engines.hf import HFEngine  # lazy: torch stays off CLI start-up

        return HFEngine(settings.model, settings.kv.press, models_root, settings.kv.quant)
    # lazy: aiohttp (0.4 s) stays off CLI start-up, as torch does for hf
    from kv_transition.engines.openai_compat import OpenAIEngine

    for policy, budget in grid:  # every setting must have somewhere to go
        resolve_base_url(settings.engine, policy, budget)
    tok = load_tokenizer(settings.model.tokenizer) if settings.model.tokenizer else None
    engine = OpenAIEngine(settings, tokenizer=tok)
    try:
        engine.check_reachable()
    except BaseException:
        engine.close()  # its connections, before the error reaches the user
        raise
    return engine
