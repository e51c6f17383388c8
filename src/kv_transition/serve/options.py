"""The server's settings (config ``serve:`` overridden by command-line flags) and the KV setting
each request runs under.

Bad server settings are the user's to fix before anything starts (``BadInput``, exit 2); a bad
per-request setting is the client's (``ApiError`` 400 with an OpenAI-style body).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from kv_transition.errors import BadInput
from kv_transition.policy.spec import BASELINE_POLICY, POLICIES
from kv_transition.serve.protocol import ApiError
from kv_transition.settings import ServeConfig


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    policy: str | None  # fixed for every request, or None: from the body
    budget: float | None
    api_key: str | None  # the bearer token clients must send; never logged
    max_body_bytes: int
    max_queue: int

    def describe(self) -> str:
        policy = self.policy or "kv_policy from the request (default full)"
        budget = f"{self.budget:g}" if self.budget is not None else \
            "kv_budget from the request (default 1.0)"
        return f"policy {policy}, budget {budget}"


def resolve_options(cfg: ServeConfig, *, host: str | None = None, port: int | None = None,
                    policy: str | None = None, budget: float | None = None,
                    api_key_env: str | None = None) -> ServeOptions:
    policy = policy if policy is not None else cfg.policy
    budget = budget if budget is not None else cfg.budget
    port = port if port is not None else cfg.port
    if policy is not None and policy not in POLICIES:
        raise BadInput(f"--policy / serve.policy {policy!r}: unknown policy; allowed: "
                       f"{', '.join(sorted(POLICIES))}")
    if budget is not None and not 0.0 < budget <= 1.0:
        raise BadInput(f"--budget / serve.budget {budget:g}: a budget is the fraction of the KV "
                       "cache kept, in (0, 1]")
    if policy == BASELINE_POLICY and budget is not None and budget < 1.0:
        raise BadInput(f"--policy full keeps the whole cache; --budget {budget:g} needs a "
                       "compressing policy (or leave --budget unset)")
    if not 0 <= port <= 65535:
        raise BadInput(f"--port / serve.port {port}: allowed 0-65535")
    return ServeOptions(host=host or cfg.host, port=port, policy=policy, budget=budget,
                        api_key=_api_key(api_key_env or cfg.api_key_env),
                        max_body_bytes=int(cfg.max_body_mb * 2**20), max_queue=cfg.max_queue)


def _api_key(env_name: str | None) -> str | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        # name the variable, never a value: this message is printed
        raise BadInput(f"--api-key-env / serve.api_key_env is {env_name!r} but the environment "
                       f"variable {env_name} is not set; export it or drop the option")
    return value


def request_kv(options: ServeOptions, policy: str | None,
               budget: float | None) -> tuple[str, float]:
    """The (policy, budget) one request runs under; a 400 names what is wrong."""
    if options.policy is not None:
        if policy is not None and policy != options.policy:
            raise ApiError(400, f"this server applies policy {options.policy!r} to every request "
                           f"(started with --policy); kv_policy {policy!r} cannot be served "
                           "here", param="kv_policy", code="kv_setting_fixed")
        policy = options.policy
    if options.budget is not None:
        if budget is not None and not math.isclose(budget, options.budget, abs_tol=1e-9):
            raise ApiError(400, f"this server applies budget {options.budget:g} to every request "
                           f"(started with --budget); kv_budget {budget:g} cannot be served "
                           "here", param="kv_budget", code="kv_setting_fixed")
        budget = options.budget
    policy = policy or BASELINE_POLICY
    budget = 1.0 if budget is None else budget
    if policy not in POLICIES:
        raise ApiError(400, f"unknown kv_policy {policy!r}; allowed: "
                       f"{', '.join(sorted(POLICIES))}", param="kv_policy", code="invalid_value")
    if not (math.isfinite(budget) and 0.0 < budget <= 1.0):
        raise ApiError(400, f"kv_budget {budget:g} is out of range: it is the fraction of the KV "
                       "cache kept, in (0, 1]", param="kv_budget", code="invalid_value")
    if policy == BASELINE_POLICY and budget < 1.0:
        raise ApiError(400, f"kv_policy 'full' keeps the whole cache; kv_budget {budget:g} needs "
                       "a compressing policy", param="kv_budget", code="invalid_value")
    return policy, budget
