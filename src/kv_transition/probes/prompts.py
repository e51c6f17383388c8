"""The probe prompt suite: one prompt per kind of content the novelty hypotheses are about.

Each prompt asks for text whose structure is known in advance (pure prose, pure code, prose
with code blocks, numbered reasoning steps, many unrelated topics), so spikes can be read
against where the content changes. They are instructions for an instruction-tuned model; a
base or random model continues them however it likes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbePrompt:
    prompt_id: str
    kind: str
    text: str


SUITE: dict[str, ProbePrompt] = {p.prompt_id: p for p in (
    ProbePrompt("prose_explanation", "prose", (
        "Explain in plain prose, without lists, headings or code, how a refrigerator keeps "
        "food cold. Describe what the refrigerant does in the evaporator and the condenser, "
        "why the compressor is needed, and where the heat taken from the food finally goes.")),
    ProbePrompt("code_generation", "code", (
        "Write a Python module that implements a least-recently-used cache class with get and "
        "put methods, a fixed capacity, type hints and docstrings, followed by a few unit tests "
        "using unittest. Output only the code.")),
    ProbePrompt("mixed_content", "mixed", (
        "Explain what binary search is in one paragraph. Then show a Python implementation in "
        "a code block. Then explain in a second paragraph why it runs in logarithmic time. "
        "Finally show, in a second code block, a short example that calls the function on a "
        "sorted list and prints the result.")),
    ProbePrompt("reasoning_chain", "reasoning", (
        "Solve this step by step, numbering each step and checking the arithmetic as you go: "
        "a train leaves a station at 9:40 and travels 210 kilometres at 84 kilometres per hour, "
        "waits 25 minutes, then travels 96 kilometres at 64 kilometres per hour. At what time "
        "does it arrive, and what was its average speed over the whole journey, waiting "
        "included?")),
    ProbePrompt("transition_heavy", "transitions", (
        "Write five short paragraphs separated by blank lines, each on a different topic and "
        "with no connection between them: first how rain forms, second a recipe for pancakes, "
        "third the rules for moving a knight in chess, fourth a Python function that reverses "
        "a string (as code), and fifth the history of the printing press.")),
)}


def suite(prompt_ids: list[str]) -> list[ProbePrompt]:
    """The prompts named by ``probes.prompts``, in that order (names are validated there)."""
    return [SUITE[p] for p in prompt_ids]


def prompt_seed(prompt_id: str, base: int) -> int:
    """Each prompt samples with its own seed (base + its place in the suite): one seed for all
    would make a near-uniform model draw the same tokens after every prompt."""
    return base + list(SUITE).index(prompt_id)
