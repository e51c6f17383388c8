"""Which server answers which KV setting, and the API key to send it.

Servers such as vLLM or llama.cpp fix their compression at launch, so a sweep often runs one
server per budget (or per policy and budget). ``engine.base_urls`` maps settings to servers;
``engine.base_url`` is the fallback when one server handles every setting.
"""

from __future__ import annotations

import math
import os

from kv_transition.errors import BadInput
from kv_transition.settings import EngineConfig


def _budget_text(budget: float) -> str:
    return format(float(budget), "g")


def _parse_budget(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _same_budget(key: str, budget: float) -> bool:
    # "0.5", "0.50" and ".5" all name the same budget; compare as numbers, not strings.
    value = _parse_budget(key.strip())
    return value is not None and math.isclose(value, budget, rel_tol=0.0, abs_tol=1e-9)


def _lookup(base_urls: dict[str, str], policy: str, budget: float) -> str | None:
    for key, url in base_urls.items():  # most specific first: policy@budget
        name, sep, rest = key.partition("@")
        if sep and name.strip() == policy and _same_budget(rest, budget):
            return url
    for key, url in base_urls.items():
        if "@" not in key and _same_budget(key, budget):
            return url
    return None


def resolve_base_url(engine_cfg: EngineConfig, policy: str, budget: float) -> str:
    """The base URL serving ``policy`` at ``budget``: policy@budget, then budget, then base_url."""
    url = _lookup(engine_cfg.base_urls, policy, budget) or engine_cfg.base_url
    if url:
        return url
    b = _budget_text(budget)
    raise BadInput(
        f"engine.base_urls has no entry for '{policy}@{b}' or '{b}' and engine.base_url is "
        f"unset; add one of these keys to engine.base_urls (configured keys: "
        f"{', '.join(sorted(engine_cfg.base_urls)) or 'none'}) or set engine.base_url")


def configured_base_urls(engine_cfg: EngineConfig) -> list[tuple[str, str]]:
    """Every distinct configured URL with the config field it came from, for error messages."""
    found: list[tuple[str, str]] = []
    if engine_cfg.base_url:
        found.append(("engine.base_url", engine_cfg.base_url))
    for key, url in engine_cfg.base_urls.items():
        if url not in {u for _, u in found}:
            found.append((f"engine.base_urls[{key!r}]", url))
    return found


def api_key(engine_cfg: EngineConfig) -> str | None:
    """The API key from the environment variable the config names; never from the config."""
    name = engine_cfg.api_key_env
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        # Name the variable, never a value: messages end up in logs and the database.
        raise BadInput(
            f"engine.api_key_env is {name!r} but the environment variable {name} is not set; "
            f"export {name}=<your key> or remove engine.api_key_env for servers without auth")
    return value
