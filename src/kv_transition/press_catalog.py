"""Every press kvpress 0.5.5 ships, as data: its parameters, what it wraps, where a budget goes.

Config validation reads this table instead of importing kvpress, which would pull torch and
transformers into every CLI start-up; ``tests/test_press_catalog.py`` checks it against the
installed kvpress, so it cannot drift. A policy in YAML names a press by its class name,
fixes some of its parameters and, for a wrapper, gives the press it wraps (``PressDef``).

Where the budget goes (``Press.budget``): a fraction kept, ``b``, becomes ``1 - b`` of the
named field (``compression_ratio`` for most), or ``round(b * context tokens)`` for a field
counted in tokens. A wrapper without such a field passes the budget to the press it wraps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

RATIO, TOKENS = "ratio", "tokens"
SCORER, WRAPPER, DECODING, OTHER = "scorer", "wrapper", "decoding", "other"
RATIO_FIELD = "compression_ratio"


@dataclass(frozen=True)
class Press:
    params: tuple[str, ...]  # init parameters, the wrapped press(es) excluded
    role: str = SCORER
    inner: tuple[str, ...] = ()  # fields holding wrapped presses
    inner_required: bool = True
    budget: str | None = RATIO_FIELD  # the field a budget sets; None: passed to the inner press
    budget_kind: str = RATIO
    download: str | None = None  # what the press fetches from the Hugging Face Hub
    attention_weights: bool = False  # reads attention weights: the eager implementation
    note: str = ""
    fixes_budget: bool = False  # a wrapper that overrides the budget of the press it wraps
    unsupported: str = ""  # why the harness cannot run it (config load says so)
    frees_bytes: bool = True  # False: masks or zeroes instead of dropping (honest memory)


def _scorer(*params: str, **kw: Any) -> Press:
    return Press((RATIO_FIELD, *params), **kw)


def _wrapper(*params: str, inner: tuple[str, ...] = ("press",), **kw: Any) -> Press:
    return Press(params, WRAPPER, inner, budget=kw.pop("budget", None), **kw)


_PIPELINE = "it needs kvpress's own pipeline ({}), which the hf engine does not run"
_DECODING_NOTE = "compresses while decoding: the hf engine decodes under the press"

PRESSES: dict[str, Press] = {
    # scorers: one score per token, the lowest dropped
    "KnormPress": _scorer(),
    "SnapKVPress": _scorer("window_size", "kernel_size"),
    "StreamingLLMPress": _scorer("n_sink"),
    "TOVAPress": _scorer(),
    "ObservedAttentionPress": _scorer(attention_weights=True),
    "ExpectedAttentionPress": _scorer("n_future_positions", "n_sink", "use_covariance",
                                      "use_vnorm", "epsilon"),
    "ExpectedAttentionStatsPress": _scorer(
        "n_future_positions", "n_sink", "use_covariance", "use_vnorm", "epsilon",
        "sample_seq_len", "num_samples", "dataset_name", "stats_folder",
        download="query statistics for the model (or params.stats_folder, a local copy)"),
    "PyramidKVPress": _scorer("window_size", "kernel_size", "beta"),
    "RandomPress": _scorer("seed"),
    "KeyDiffPress": _scorer(),
    "LagKVPress": _scorer("n_sink", "lag_size", "cross_scoring"),
    "LeverageScorePress": _scorer("sketch_dimension"),
    "CURPress": _scorer("num_sinks", "leverage_type", "use_random_leverage",
                        "use_local_approximation", "local_window_size"),
    "CapPress": _scorer("tau", "n_future_positions", "n_sink", "epsilon"),
    "NonCausalAttnPress": _scorer("chunk_size"),
    "CompactorPress": _scorer("sink_size_start", "sink_size_end", "chunk_size",
                              "sketch_dimension", "blending"),
    "QFilterPress": _scorer(download="Q-filters trained for the model (nthngdy/<model>_qfilt)"),
    "KVzapPress": _scorer("model_type", download="a surrogate model (nvidia/KVzap-<type>-<model>)"),
    # presses that score and drop in their own way
    "FinchPress": Press((RATIO_FIELD, "chunk_length", "normalize_scores", "rerotate_keys"), OTHER,
                        unsupported=_PIPELINE.format("a delimiter token between context and "
                                                     "question, set by update_model_and_tokenizer")),
    "KVzipPress": Press((RATIO_FIELD, "layerwise", "n_sink", "kvzip_plus_normalization",
                         "chunk_size"), OTHER,
                        unsupported=_PIPELINE.format("the context replayed after prefill")),
    "FastKVzipPress": Press((RATIO_FIELD, "layerwise", "n_sink", "window_size",
                             "window_ratio"), OTHER,
                            unsupported=_PIPELINE.format("the context replayed after prefill")),
    "KVgradPress": Press((RATIO_FIELD, "layerwise", "n_sink", "chunk_size"), OTHER,
                         unsupported=_PIPELINE.format("the context replayed after prefill")),
    "RestoreKVPress": Press((RATIO_FIELD, "layerwise", "n_sink", "kvzip_plus_normalization",
                             "chunk_size"), OTHER,
                            unsupported=_PIPELINE.format("the context replayed after prefill")),
    "KVComposePress": Press(("structured", RATIO_FIELD, "agg_task", "agg_group", "agg_head",
                             "add_v_norm", "add_mean_across_heads", "keep_token_lower_bound"),
                            OTHER, unsupported="its prefill indexes past the cache it built "
                            "(IndexError on the builtin Llama with kvpress 0.5.5)"),
    "ThinKPress": Press(("key_channel_compression_ratio", "window_size"), OTHER,
                        budget="key_channel_compression_ratio", frees_bytes=False,
                        note="zeroes key channels, not tokens: no bytes freed"),
    "SimLayerKVPress": Press(("lazy_threshold", "n_last", "n_recent", "n_initial"), OTHER,
                             budget=None, note="a lazy-layer threshold decides what is kept"),
    "DuoAttentionPress": Press(("head_compression_ratio", "on_the_fly_scoring"), OTHER,
                               budget="head_compression_ratio",
                               download="attention patterns for the model (DuoAttention's "
                               "repository, or a dataset for on_the_fly_scoring)"),
    # wrappers: change how the press they wrap is applied
    "AdaKVPress": _wrapper("alpha_safeguard", frees_bytes=False,
                           note="head-wise budgets: masks, frees no bytes"),
    "CriticalKVPress": _wrapper("epsilon", "first_stage_ratio"),
    "CriticalAdaKVPress": _wrapper("alpha_safeguard", "epsilon", "first_stage_ratio",
                                   inner_required=False, frees_bytes=False,
                                   note="head-wise budgets: masks, frees no bytes"),
    "BlockPress": _wrapper("block_size"),
    "ChunkPress": _wrapper("chunk_length"),
    "ChunkKVPress": _wrapper("chunk_length"),
    "EntropyGatedChunkKVPress": _wrapper("chunk_length", "low_entropy_chunk_length"),
    "KeyRerotationPress": _wrapper(),
    "PerLayerCompressionPress": _wrapper("compression_ratios", fixes_budget=True,
                                         note="the per-layer ratios in params are its budget"),
    "MergingPress": _wrapper("similarity_threshold", "merge_fraction", inner_required=False),
    "LUKVPress": Press((RATIO_FIELD, "sink", "window"), WRAPPER, ("press",),
                       inner_required=False,
                       unsupported="it needs a budget curve measured for the model; kvpress "
                       "0.5.5 ships one, for meta-llama/Llama-3.1-8B-Instruct"),
    "DMSPress": _wrapper("threshold", "sliding_window_size", "decoding", fixes_budget=True,
                         frees_bytes=False, note="the score threshold in params is its budget"),
    "ComposedPress": _wrapper(inner=("presses",), note="applies its presses in turn"),
    # compression during decoding
    "DecodingPress": Press(("compression_interval", "target_size", "hidden_states_buffer_size"),
                           DECODING, ("base_press",), budget="target_size",
                           budget_kind=TOKENS, note=_DECODING_NOTE),
    "CAMPress": Press(("compression_interval", "target_size", "hidden_states_buffer_size",
                       "merge_budget"), DECODING, ("base_press",), budget="target_size",
                      budget_kind=TOKENS, note=_DECODING_NOTE),
    "CompressionRatioDecodingPress": Press(
        ("compression_interval", "hidden_states_buffer_size", "target_compression_ratio"),
        DECODING, ("base_press",), budget="target_compression_ratio", note=_DECODING_NOTE),
    "PrefillDecodingPress": Press((), DECODING, ("prefilling_press", "decoding_press"),
                                  inner_required=False, budget=None, note=_DECODING_NOTE),
}
# Base classes kvpress exports for subclassing; not presses to run.
ABSTRACT = ("BasePress", "ScorerPress")
# Wrappers whose fields hold a list of presses rather than one.
LIST_INNER = {"presses"}


def observation_window(window: int, n_context_tokens: int) -> int:
    """SnapKV-style scoring needs more context tokens than its observation window."""
    return max(1, min(window, n_context_tokens // 2))


def runs_offline(info: Press) -> bool:
    """Runs in the hf engine with no download, a budget reaching it (the test suite runs these)."""
    return (not info.unsupported and not info.download
            and not info.fixes_budget and (info.budget is not None or bool(info.inner)))


def _status(info: Press) -> str:
    if info.unsupported:
        return "no: " + info.unsupported
    if info.download:
        return "offline: clear error; needs " + info.download
    if info.fixes_budget or info.budget is None and not info.inner:
        return "no budget: " + (info.note or "it has no budget parameter")
    return "yes" + (f" ({info.note})" if info.note else "")


def markdown_table() -> str:
    """The README's press table (tests/test_press_catalog.py keeps the README in step)."""
    rows = ["| press | kind | budget sets | wraps | runs in the test suite |",
            "|---|---|---|---|---|"]
    for name in sorted(PRESSES):
        info = PRESSES[name]
        budget = "the wrapped press's" if info.budget is None and info.inner else \
            f"`{info.budget}`" + (" (tokens)" if info.budget_kind == TOKENS else "") \
            if info.budget else "—"
        wraps = ", ".join(f"`{f}`" for f in info.inner) or "—"
        rows.append(f"| {name} | {info.role} | {budget} | {wraps} | {_status(info)} |")
    return "\n".join(rows)


def allowed_presses() -> str:
    return ", ".join(sorted(PRESSES))


class PressDef(BaseModel):
    """A policy built from any kvpress press: its class, fixed parameters, wrapped press(es)."""

    model_config = ConfigDict(extra="forbid")

    press: str = Field(description="A kvpress class name, e.g. SnapKVPress or AdaKVPress.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Fixed init parameters. The budget sets the budget "
        "field (README's press table) of the first press, outer before inner, that does not "
        "fix it here.")
    inner: "PressDef | list[PressDef] | None" = Field(
        None, description="The press a wrapper wraps (a list for ComposedPress).")

    @model_validator(mode="after")
    def _known(self) -> "PressDef":
        info = PRESSES.get(self.press)
        if info is None:
            raise ValueError(f"unknown press {self.press!r}; allowed: {allowed_presses()}")
        if info.unsupported:
            raise ValueError(f"{self.press} cannot run here: {info.unsupported}")
        unknown = sorted(set(self.params) - set(info.params))
        if unknown:
            raise ValueError(f"{self.press}: unknown parameter(s) {', '.join(unknown)}; allowed: "
                             f"{', '.join(info.params) or 'none'}")
        self._check_inner(info)
        return self

    def _check_inner(self, info: Press) -> None:
        if not info.inner:
            if self.inner is not None:
                raise ValueError(f"{self.press} wraps no press; remove 'inner'")
            return
        if self.inner is None and info.inner_required:
            raise ValueError(f"{self.press} wraps a press: give it as 'inner' "
                             "(for example inner: {press: SnapKVPress})")
        is_list = isinstance(self.inner, list)
        if len(info.inner) > 1:  # PrefillDecodingPress: one press per field, in their order
            if self.inner is not None and (not is_list or len(self.inner) != len(info.inner)):
                raise ValueError(f"{self.press}: 'inner' must be a list of {len(info.inner)} "
                                 f"presses, the {' and the '.join(info.inner)} in that order")
            return
        if self.inner is not None and is_list != bool(LIST_INNER & set(info.inner)):
            shape = "a list of presses" if not is_list else "one press"
            raise ValueError(f"{self.press}: 'inner' must be {shape}")

    def tree(self) -> list["PressDef"]:
        """This press and every press it wraps, outer before inner."""
        return [self, *(p for i in self.inners() for p in i.tree())]

    def inners(self) -> list["PressDef"]:
        if self.inner is None:
            return []
        return self.inner if isinstance(self.inner, list) else [self.inner]

    def describe(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        inner = "; ".join(i.describe() for i in self.inners())
        return f"{self.press}({params}{'; ' if params and inner else ''}{inner})"


class NamedPressDef(PressDef):
    """A ``kv.policies`` entry written as a mapping: a name plus its press definition."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]*$",
                      description="The policy's name in the grid, database and report.")
