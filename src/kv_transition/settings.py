"""The experiment config: YAML validated by pydantic, with ``--set a.b=v`` overrides.

Every model forbids unknown keys so a typo is an error, not a silently ignored setting.
Secrets never live here: ``engine.api_key_env`` names the environment variable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kv_transition.errors import BadInput

SYNTHETIC_TASKS = (
    "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    name: Literal["synthetic", "longbench"] = Field(
        "synthetic", description="Task source: the offline RULER-style generator or LongBench.")
    task: str = Field(
        "mix", description="Synthetic: one of %s or 'mix' (cycles through all). LongBench: the "
        "subset name, e.g. 'hotpotqa'." % ", ".join(SYNTHETIC_TASKS))
    path: str | None = Field(
        None, description="LongBench: a .jsonl file or a directory holding <task>.jsonl. "
        "Unset: load through `datasets` from the hub (needs network).")
    n_per_bin: int = Field(10, ge=1, description="Examples sampled per length bin (seeded).")
    lengths: list[int] = Field(
        [256, 512, 1024, 2048], description="Synthetic: target context lengths in tokens of the "
        "model's tokenizer; n_per_bin examples are generated at each.")
    seed: int = Field(0, description="Seed for generation and per-bin sampling.")

    @field_validator("lengths")
    @classmethod
    def _positive_lengths(cls, v: list[int]) -> list[int]:
        if not v or any(n < 32 for n in v):
            raise ValueError("lengths must be a non-empty list of token counts >= 32")
        return sorted(set(v))

    @model_validator(mode="after")
    def _known_task(self) -> "DatasetConfig":
        if self.name == "synthetic" and self.task not in (*SYNTHETIC_TASKS, "mix"):
            raise ValueError(
                f"unknown synthetic task {self.task!r}; allowed: {', '.join(SYNTHETIC_TASKS)}, mix")
        return self


class BinningConfig(_Strict):
    n_bins: int = Field(5, ge=1, le=50, description="Quantile bins over token length.")


class ModelConfig(_Strict):
    name: str = Field(
        "builtin:tiny-random", description="A local transformers checkpoint directory, "
        "'builtin:tiny-random' (a random-weight model the project builds offline), or the "
        "model name an OpenAI-compatible server expects.")
    tokenizer: str | None = Field(
        None, description="Tokenizer path for token counting when it differs from model.name "
        "(the openai engine needs one to bin by tokens; unset: a whitespace word count).")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="Wrap the prompt in the tokenizer's chat template: 'auto' uses it "
        "when the tokenizer has one.")
    attn_implementation: str | None = Field(
        None, description="transformers attention implementation; unset picks 'sdpa', or "
        "'eager' for policies that need attention weights (h2o).")


class RequestConfig(_Strict):
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(1.0, ge=0, description="Base of the exponential backoff.")


class EngineConfig(_Strict):
    kind: Literal["hf", "openai"] = "hf"
    base_url: str | None = Field(None, description="openai: the shared base URL (…/v1).")
    base_urls: dict[str, str] = Field(
        default_factory=dict, description="openai: one base URL per setting, keyed "
        "'policy@budget' (e.g. 'snapkv@0.5') or by budget alone ('0.5'); overrides base_url.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key.")
    endpoint: Literal["chat", "completions"] = "chat"
    send_kv_params: bool = Field(
        False, description="openai: send kv_policy/kv_budget in the request body "
        "(servers that choose compression per request).")
    request: RequestConfig = Field(default_factory=RequestConfig)


class PressConfig(_Strict):
    window_size: int | None = Field(None, ge=1, description="SnapKV observation window.")
    n_sink: int | None = Field(None, ge=0, description="StreamingLLM sink tokens.")


class KVConfig(_Strict):
    policy: str | None = Field(None, description="A single policy (shorthand for policies).")
    policies: list[str] = Field(default_factory=list, description="Policies to compare.")
    budgets: list[float] = Field(
        [1.0, 0.5, 0.2], description="Fractions of the full KV cache kept, in (0, 1]; 1.0 is "
        "the uncompressed baseline, run once as policy 'full'.")
    query_aware: bool = Field(
        False, description="true: the question is inside the compressed prefill; false: the "
        "context is compressed first and the question asked after it.")
    press: PressConfig = Field(default_factory=PressConfig)

    @field_validator("budgets")
    @classmethod
    def _budget_range(cls, v: list[float]) -> list[float]:
        bad = [b for b in v if not 0.0 < b <= 1.0]
        if bad or not v:
            raise ValueError(f"budgets must be a non-empty list of numbers in (0, 1]; got {bad or v}")
        return sorted(set(v), reverse=True)

    @model_validator(mode="after")
    def _known_policies(self) -> "KVConfig":
        from kv_transition.kv.registry import POLICIES

        names = self.all_policies()
        unknown = [p for p in names if p not in POLICIES]
        if unknown:
            raise ValueError(
                f"unknown policy {unknown[0]!r}; allowed: {', '.join(sorted(POLICIES))}")
        return self

    def all_policies(self) -> list[str]:
        names = list(self.policies)
        if self.policy and self.policy not in names:
            names.insert(0, self.policy)
        return names or ["snapkv"]


class DecodingConfig(_Strict):
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy.")
    max_tokens: int = Field(16, ge=1, le=8192)
    seed: int = 0


class OutputConfig(_Strict):
    exp_group_id: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$")


class DBConfig(_Strict):
    path: str | None = Field(None, description="Default: runs/<exp_group_id>/kv_transition.sqlite")


class AnalysisConfig(_Strict):
    n_bootstrap: int = Field(2000, ge=100)
    ci: float = Field(0.95, gt=0.5, lt=1.0)
    seed: int = 0
    z_threshold: float = Field(1.0, gt=0, description="Transition detector z-score threshold.")


class Settings(_Strict):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    binning: BinningConfig = Field(default_factory=BinningConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    kv: KVConfig = Field(default_factory=KVConfig)
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    db: DBConfig = Field(default_factory=DBConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)

    @model_validator(mode="after")
    def _engine_needs(self) -> "Settings":
        if self.engine.kind == "openai" and not (self.engine.base_url or self.engine.base_urls):
            raise ValueError("engine.kind 'openai' needs engine.base_url or engine.base_urls")
        return self

    def snapshot_yaml(self) -> str:
        """The validated config as stored in ``experiments.config_yaml`` (never the env)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override; the value is parsed as YAML."""
    if "=" not in assignment:
        raise BadInput(f"--set {assignment!r}: expected key.path=value, e.g. kv.budgets=[1.0,0.5]")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise BadInput(f"--set {assignment!r}: empty key path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise BadInput(f"--set {assignment!r}: value is not valid YAML ({exc})") from None
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise BadInput(f"--set {assignment!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config/default.yaml for the allowed keys)"
        lines.append(f"  {loc}: {msg}")
    return f"{source}: invalid config\n" + "\n".join(lines)


def load_settings(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Settings:
    """Read, override and validate a config file; raise ``BadInput`` naming the field."""
    data: dict[str, Any] = {}
    source = str(path) if path else "(defaults)"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise BadInput(f"{p}: config file not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise BadInput(f"{p}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise BadInput(f"{p}: the top level must be a mapping of sections (dataset, kv, ...)")
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise BadInput(_format_errors(source, exc)) from None
