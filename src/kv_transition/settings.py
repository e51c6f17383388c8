"""The experiment config: YAML validated by pydantic, with ``--set a.b=v`` overrides.

Every model forbids unknown keys so a typo is an error, not a silently ignored setting.
Secrets never live here: ``engine.api_key_env`` names the environment variable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kv_transition.errors import BadInput
from kv_transition.model_shapes import SHAPES
from kv_transition.policy.quant import kivi_width_error
from kv_transition.policy.spec import check_policies, register_custom
from kv_transition.press_catalog import NamedPressDef, PressDef

SYNTHETIC_TASKS = (
    "niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "variable_tracking",
)
# Offline functional families (canary/source.py); 'mix' cycles them, 'humaneval' reads a file.
FUNCTIONAL_TASKS = ("code", "tool", "code_long", "tool_long")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Strict):
    name: Literal["synthetic", "longbench", "functional"] = Field(
        "synthetic", description="Task source: the offline RULER-style generator, LongBench, or "
        "functional tasks (code run in a sandbox, JSON tool calls; canary/source.py).")
    task: str = Field(
        "mix", description="Synthetic: one of %s or 'mix' (cycles through all). LongBench: the "
        "subset name, e.g. 'hotpotqa'. Functional: one of %s, 'mix', or 'humaneval' (a local "
        "HumanEval JSONL at dataset.path)." % (", ".join(SYNTHETIC_TASKS),
                                              ", ".join(FUNCTIONAL_TASKS)))
    tasks: list[str] | None = Field(
        None, description="Synthetic with task 'mix': the families it cycles through, in "
        "order (unset: all of %s)." % ", ".join(SYNTHETIC_TASKS))
    path: str | None = Field(
        None, description="LongBench: a .jsonl file or a directory holding <task>.jsonl. "
        "Unset: load through `datasets` from the hub (needs network).")
    n_per_bin: int = Field(10, ge=1, description="Examples sampled per length bin (seeded).")
    lengths: list[int] = Field(
        [256, 512, 1024, 2048], description="Synthetic: target context lengths in tokens of the "
        "model's tokenizer; n_per_bin examples are generated at each.")
    seed: int = Field(0, description="Seed for generation and per-bin sampling.")
    questions_per_context: int = Field(
        1, ge=1, le=8, description="Synthetic: questions asked of each context (its own, then "
        "single-key questions about its other needles; a family with fewer needles asks fewer). "
        "n_per_bin counts contexts; the run prefills and compresses a context once per setting "
        "and answers each question from a copy of that cache, and the statistics treat the "
        "questions of one context as one cluster.")
    show_tool_schema: bool = Field(
        False, description="Functional tool tasks: print the tool's JSON schema in the question "
        "(for real models; the bundled reference model is trained without it).")

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
        if self.questions_per_context > 1 and self.name != "synthetic":
            raise ValueError(f"dataset.questions_per_context {self.questions_per_context}: only "
                             "the synthetic generator asks several questions of a context; use 1 "
                             f"with dataset.name {self.name!r}")
        if self.tasks is not None and (self.name != "synthetic" or self.task != "mix"):
            raise ValueError("dataset.tasks applies only to name 'synthetic' with task 'mix'")
        unknown = [t for t in self.tasks or [] if t not in SYNTHETIC_TASKS]
        if unknown or self.tasks == []:
            raise ValueError(f"dataset.tasks {self.tasks}: give one or more of "
                             f"{', '.join(SYNTHETIC_TASKS)}")
        if self.name == "functional" and self.task not in (*FUNCTIONAL_TASKS, "mix", "humaneval"):
            raise ValueError(f"unknown functional task {self.task!r}; allowed: "
                             f"{', '.join(FUNCTIONAL_TASKS)}, mix, humaneval")
        if self.name == "functional" and self.task == "humaneval" and not self.path:
            raise ValueError("functional task 'humaneval' needs dataset.path (a local JSONL file)")
        return self

    def candidates_per_length(self, n_bins: int) -> int:
        """Examples a generated source makes at each target length: enough that every one of
        ``n_bins`` quantile bins can hold ``n_per_bin``, whatever the lengths fall into."""
        return math.ceil(self.n_per_bin * n_bins / len(self.lengths))


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
    init: Literal["pretrained", "random"] = Field(
        "pretrained", description="'random': systems mode, a random-weight model of the named "
        "model.shape, for latency and memory at real scale without weights; accuracy is "
        "meaningless and the report hides it.")
    shape: str | None = Field(
        None, description="Systems mode architecture: llama-3.1-8b, qwen2.5-7b, mistral-7b, "
        "tiny-llama. The tokenizer is model.tokenizer, else the builtin word tokenizer.")
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="Wrap the prompt in the tokenizer's chat template: 'auto' uses it "
        "when the tokenizer has one.")
    attn_implementation: str | None = Field(
        None, description="transformers attention implementation; unset picks 'sdpa', or "
        "'eager' for policies that need attention weights (h2o).")
    threads: int | None = Field(
        None, ge=1, description="hf engine on CPU: torch threads (torch.set_num_threads). "
        "Unset keeps torch's default (one per core). On a machine other jobs share, fewer "
        "threads than cores is often faster: benchmarks/engine_overhead.py measures it.")

    @model_validator(mode="after")
    def _shape_for_random(self) -> "ModelConfig":
        if self.init == "random":
            if self.shape not in SHAPES:
                raise ValueError(f"model.init 'random' needs model.shape, one of: "
                                 f"{', '.join(sorted(SHAPES))}")
        return self


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
    concurrency: int = Field(
        1, ge=1, le=1024, description="openai: requests in flight at once. 1 keeps each "
        "latency free of server-side queueing and batching; raise it for sweep throughput.")
    stream: bool = Field(
        True, description="openai: stream answers (SSE) to measure time to first token and "
        "inter-token times; false: one JSON body per request.")
    cache_bust: Literal["off", "cache_salt", "cache_prompt"] = Field(
        "off", description="openai: defeat the server's prefix cache per request: "
        "'cache_salt' sends a fresh random cache_salt (vLLM), 'cache_prompt' sends "
        "cache_prompt: false (llama.cpp). See README, prefix caching.")


class PressConfig(_Strict):
    window_size: int | None = Field(None, ge=1, description="SnapKV observation window.")
    n_sink: int | None = Field(None, ge=0, description="StreamingLLM sink tokens.")
    custom: dict[str, PressDef] = Field(
        default_factory=dict, description="Policies built from any kvpress press, by name "
        "(README, 'Every kvpress press'); a kv.policies entry written as a mapping lands here.")


class QuantConfig(_Strict):
    """Quantized caches (kv/quant): int8/int4/int3/int2/int, kivi[-kXvY], adaptive."""

    group_size: int = Field(
        32, ge=8, le=4096, description="Values sharing one float16 scale and zero-point, a "
        "multiple of 8: channels of one token (per-token; capped at the model's head_dim) or "
        "tokens of one channel (per-channel).")
    residual_length: int = Field(
        128, ge=0, description="kivi: the most recent tokens kept in full precision; a "
        "multiple of group_size.")
    axis: Literal["token", "channel"] = Field(
        "token", description="Uniform intN caches: group per token (along head_dim) or per "
        "channel (over group_size tokens; fewer than group_size recent tokens stay exact).")
    key_bits: int | None = Field(
        None, description="kivi: key width (2, 4 or 8); with value_bits it fixes plain 'kivi', "
        "which otherwise picks widths from the budget.")
    value_bits: int | None = Field(None, description="kivi: value width (2, 4 or 8).")
    sink_tokens: int = Field(4, ge=0, description="adaptive: first tokens always kept at 8 bits.")
    window: int = Field(32, ge=1, description="adaptive: queries of the last `window` prompt "
                        "tokens score each token's importance.")

    @model_validator(mode="after")
    def _valid_widths(self) -> "QuantConfig":
        if self.group_size % 8:
            raise ValueError(f"group_size {self.group_size} must be a multiple of 8 (codes are "
                             "packed 8 at a time)")
        if (self.key_bits is None) != (self.value_bits is None):
            raise ValueError("set both key_bits and value_bits, or neither")
        error = self.key_bits is not None and kivi_width_error(self.key_bits, self.value_bits)
        if error:
            raise ValueError(f"key_bits/value_bits: {error}")
        return self


class IntegrityConfig(_Strict):
    check: bool = Field(
        True, description="hf engine: before a compressing policy's requests run, check its "
        "integration with the model (sliding-window layers left alone, the press applied, "
        "budget 0.9 close to the full cache); a failure is exit 2.")
    max_kl: float = Field(
        1.0, gt=0.0, description="Largest KL divergence (nats) of the next-token distribution "
        "at budget 0.9 from the full cache's on the warm-up prompt.")


class KVConfig(_Strict):
    policy: str | None = Field(None, description="A single policy (shorthand for policies).")
    policies: list[str] = Field(
        default_factory=list, description="Policies to compare: names, or mappings "
        "{name, press, params, inner} that build a policy from any kvpress press.")
    budgets: list[float] = Field(
        [1.0, 0.5, 0.2], description="Fractions of the full KV cache kept, in (0, 1]; 1.0 is "
        "the uncompressed baseline, run once as policy 'full'.")
    budget_tokens: list[int] = Field(
        default_factory=list, description="Budgets as a number of context tokens kept (each "
        "at least 2), beside the fractions: the same grid, analysis and plots; a context no "
        "longer than the budget is kept whole. Eviction policies only.")
    query_aware: bool = Field(
        False, description="true: the question is inside the compressed prefill; false: the "
        "context is compressed first and the question asked after it.")
    press: PressConfig = Field(default_factory=PressConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)
    shared_prefill: bool = Field(
        True, description="hf engine: prefill each example once and derive every budget's cache "
        "from it, for policies where that is exact (identical answers, far fewer prefills). "
        "false: a fresh prefill per request, for latency studies of one setting in isolation.")

    @field_validator("budgets")
    @classmethod
    def _budget_range(cls, v: list[float]) -> list[float]:
        bad = [b for b in v if not 0.0 < b <= 1.0]
        if bad or not v:
            raise ValueError(f"budgets must be a non-empty list of numbers in (0, 1]; got {bad or v}")
        return sorted(set(v), reverse=True)

    @field_validator("budget_tokens")
    @classmethod
    def _token_range(cls, v: list[int]) -> list[int]:
        bad = [t for t in v if t < 2]
        if bad:
            raise ValueError(f"budget_tokens must be whole numbers of tokens >= 2; got {bad}")
        return sorted(set(v), reverse=True)

    @model_validator(mode="before")
    @classmethod
    def _press_policies(cls, data: Any) -> Any:
        """Mapping entries of ``policies`` become named definitions in ``press.custom``."""
        if not isinstance(data, dict) or not isinstance(data.get("policies"), list):
            return data
        entries = [e for e in data["policies"] if isinstance(e, dict)]
        if not entries:
            return data
        press = dict(data.get("press") or {})
        custom = dict(press.get("custom") or {})
        for entry in entries:
            named = NamedPressDef.model_validate(entry)
            if named.name in custom:
                raise ValueError(f"policy {named.name!r} is defined twice")
            custom[named.name] = named.model_dump(exclude={"name"}, exclude_none=True)
        names = [e["name"] if isinstance(e, dict) else e for e in data["policies"]]
        return {**data, "policies": names, "press": {**press, "custom": custom}}

    @model_validator(mode="after")
    def _known_policies(self) -> "KVConfig":
        for name, definition in self.press.custom.items():
            register_custom(name, definition)
        # unknown names, bad compositions, budgets a quantized policy cannot realise
        check_policies(self.all_policies(), self.budgets, self.quant, self.budget_tokens)
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
    z_threshold: float = Field(1.0, gt=0, description="Unused since issue 13 (z-scores only "
                               "describe the curve now); kept so old configs still load.")
    alpha: float = Field(0.05, gt=0, lt=0.5, description="Transition detector: level of the "
                         "one-sided tests after multiplicity control (split over refine's looks).")
    multiplicity: Literal["bh", "holm"] = Field(
        "bh", description="Across bins, signals and settings: Benjamini-Hochberg or Holm.")
    inconclusive_p: float = Field(0.1, gt=0, lt=1, description="A bin whose smallest raw p is "
                                  "below this, yet not significant, is inconclusive: `refine` "
                                  "grows it.")
    refine: bool = Field(False, description="`all` runs `refine` after `analyze`.")
    max_n_per_bin: int | None = Field(
        None, ge=1, description="`refine` doubles inconclusive bins up to this many examples. "
        "Set, it also fixes the number of looks (1 + doublings from dataset.n_per_bin) that "
        "alpha is split over, from the first `analyze` on.")


PROBE_PROMPTS = ("prose_explanation", "code_generation", "mixed_content", "reasoning_chain",
                 "transition_heavy")
PROBE_METRICS = ("cosine", "l2", "projection", "mahalanobis")


class ProbesConfig(_Strict):
    """`kv-transition novelty`: capture K/V during generation and measure novelty."""

    prompts: list[str] = Field(list(PROBE_PROMPTS), min_length=1, description="Prompt suite "
                               "entries to run: %s." % ", ".join(PROBE_PROMPTS))
    layers: list[int] | Literal["all"] = Field(
        [0, -1], description="Layers to capture; negative counts from the end (-1 = last).")
    heads: list[int] | Literal["all"] = Field(
        "all", description="KV heads to capture (indices < num_key_value_heads); ignored for "
        "target 'hidden'.")
    target: Literal["keys", "values", "hidden"] = Field(
        "keys", description="What the novelty metrics read: the cache's keys or values, or the "
        "hidden states entering attention (an explicit proxy, not the cache).")
    max_new_tokens: int = Field(128, ge=1, le=8192, description="Tokens generated per prompt.")
    max_positions: int = Field(
        2048, ge=8, description="Cap on captured positions (prompt + generated); generation "
        "stops at the cap, which bounds memory and disk.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 is greedy.")
    seed: int = Field(0, description="Sampling seed; each prompt adds its place in the suite.")
    window: int = Field(16, ge=2, description="Trailing window of cosine/L2/projection novelty.")
    mahalanobis_window: int = Field(32, ge=2, description="Trailing window of Mahalanobis.")
    mahalanobis_diag_above: int = Field(
        32, ge=1, description="Above this vector dimension the covariance is diagonal.")
    shrinkage: float = Field(0.1, ge=0.0, le=1.0, description="Covariance shrinkage to "
                             "the scaled identity (full) or the mean variance (diagonal).")
    subspace_energy: float = Field(0.9, gt=0.0, le=1.0, description="Projection residual: "
                                   "the window's subspace keeps this fraction of its energy.")
    spike_k: float = Field(2.0, gt=0.0, description="Spike: value above mean + k·std.")
    spike_merge: int = Field(3, ge=0, description="Spikes at most this many positions apart "
                             "merge into one event.")
    max_lag: int = Field(50, ge=1, description="Autocorrelation up to this lag.")
    transition_radius: int = Field(2, ge=0, description="A spike within this many positions "
                                   "of a semantic transition counts as at the transition.")
    high_novelty_quantile: float = Field(0.9, gt=0.0, lt=1.0, description="High-novelty "
                                         "positions: above this quantile of the segment.")
    primary_metric: Literal["cosine", "l2", "projection", "mahalanobis"] = Field(
        "cosine", description="The metric the hypotheses verdicts and main figures use.")
    segment: Literal["generated", "prompt", "all"] = Field(
        "generated", description="Positions the statistics cover.")
    store: Literal["npz", "db"] = Field("npz", description="Captured tensors: streamed to "
                                        "novelty/kv/<prompt>/layer_XX.npz or to novelty_kv.")

    @field_validator("prompts")
    @classmethod
    def _known_prompts(cls, v: list[str]) -> list[str]:
        unknown = [p for p in v if p not in PROBE_PROMPTS]
        if unknown:
            raise ValueError(f"unknown prompt {unknown[0]!r}; allowed: {', '.join(PROBE_PROMPTS)}")
        return list(dict.fromkeys(v))

    @field_validator("layers", "heads")
    @classmethod
    def _non_empty(cls, v: list[int] | str) -> list[int] | str:
        if isinstance(v, list) and not v:
            raise ValueError("must be 'all' or a non-empty list of indices")
        return v


class ServeConfig(_Strict):
    """`kv-transition serve`: the OpenAI-compatible server around the hf engine."""

    host: str = Field("127.0.0.1", description="Interface to bind; loopback by default.")
    port: int = Field(8000, ge=0, le=65535)
    policy: str | None = Field(
        None, description="Fix the policy for every request; unset: kv_policy in the body "
        "(default 'full').")
    budget: float | None = Field(
        None, gt=0.0, le=1.0, description="Fix the budget for every request; unset: "
        "kv_budget in the body (default 1.0).")
    api_key_env: str | None = Field(
        None, description="Environment variable holding the bearer token clients must send.")
    max_body_mb: float = Field(16.0, gt=0, description="Largest request body accepted.")
    max_queue: int = Field(
        64, ge=1, description="Requests waiting or running at once; more get HTTP 503.")


class PerplexityConfig(_Strict):
    """Perplexity under compression: prefill a prefix through the compressed cache, then
    teacher-force the continuation (canary/perplexity.py)."""

    path: str | None = Field(
        None, description="Held-out text: a .jsonl file with a \"text\" field per line, or a "
        "plain UTF-8 text file. Unset: offline haystack text of the synthetic generator.")
    n_texts: int = Field(16, ge=1, le=10000, description="Windows scored per setting.")
    prefix_tokens: int = Field(
        512, ge=8, description="Tokens prefilled through the compressed cache.")
    continuation_tokens: int = Field(
        128, ge=2, description="Tokens teacher-forced after it; their perplexity is recorded.")
    seed: int = Field(0, description="Seed of the offline held-out text.")


class CanaryConfig(_Strict):
    """The functional canary: perplexity next to functional accuracy, and the SDS."""

    perplexity: PerplexityConfig | None = Field(
        None, description="Set to measure perplexity per policy x budget during `run` (hf "
        "engine only) and the Silent Degradation Score during `analyze`.")


class RayConfig(_Strict):
    """`run.executor: ray` (run/ray_executor.py): shards of the grid on Ray actors."""

    address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'ray://head:10001', 'head:6379'); "
        "unset: start a local Ray instance on this machine for the run.")
    num_actors: int | None = Field(
        None, ge=1, description="Actors, each holding one model. Unset: the cluster's GPUs / "
        "num_gpus, or its CPUs / num_cpus when num_gpus is 0.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 = one model per GPU).")
    num_cpus: float = Field(1.0, ge=0, description="CPUs per actor.")
    shard_size: int = Field(
        4, ge=1, description="Examples per shard; a shard is these examples under one "
        "shared-prefill group of settings (or one setting), the unit an actor answers and a "
        "failed actor's replacement redoes.")
    max_shard_attempts: int = Field(
        3, ge=1, le=20, description="Tries of one shard (a dead actor counts as a try); after "
        "the last, its unanswered requests are recorded as failed and the run goes on.")
    base_urls: list[str] = Field(
        default_factory=list, description="openai engine: data-parallel servers; actor i "
        "sends every request to base_urls[i % len] (each server serves every setting).")


class RunConfig(_Strict):
    """How `run` spreads the grid: one or several local workers, or Ray actors."""

    executor: Literal["local", "ray"] = Field(
        "local", description="'local': this process answers, cooperating with any other "
        "`run` process on the experiment through leases. 'ray': Ray actors answer, this process "
        "is the only database writer (needs `pip install 'kv-transition[ray]'`).")
    lease_s: float = Field(
        300.0, gt=0, description="Seconds a worker's claim on an example's requests lasts "
        "without renewal; a live worker renews every lease_s/3, so only a dead worker's claims "
        "expire (a dead worker on this host is noticed at once).")
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("executor")
    @classmethod
    def _ray_installed(cls, v: str) -> str:
        import importlib.util

        if v == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError("'ray' needs Ray installed: pip install 'kv-transition[ray]' "
                             "(or use 'local')")
        return v


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
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _engine_needs(self) -> "Settings":
        if self.engine.kind == "openai" and not (self.engine.base_url or self.engine.base_urls
                                                 or self.run.ray.base_urls):
            raise ValueError("engine.kind 'openai' needs engine.base_url or engine.base_urls")
        if self.run.ray.base_urls and (self.engine.kind != "openai" or self.run.executor != "ray"):
            raise ValueError("run.ray.base_urls needs engine.kind 'openai' and run.executor 'ray'")
        if self.canary.perplexity is not None and self.engine.kind != "hf":
            raise ValueError("canary.perplexity needs engine.kind 'hf': perplexity reads the "
                             "logits of a compressed cache, which an HTTP server does not return")
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
