"""From a request's prompt to what the hf engine runs, so the server answers as the harness does.

A prompt written with the project's template (``data/prompt.py``) is recognised and split back
into context, question and answer prefix. The server then gives ``HFEngine`` the very
``GenerationRequest`` the in-process engine gets, so both build the same token ids: the same
chat template, the same BOS, the same context/question boundary where compression stops. This
holds for ``/v1/completions`` and ``/v1/chat/completions`` alike (a chat request's single user
message is the same text as a completion's prompt).

Any other prompt is run as text: chat messages rendered with the model's chat template, then
the whole prompt is prefilled under the policy (there is no question to hold back).
"""

from __future__ import annotations

from dataclasses import dataclass

from kv_transition.data import prompt as prompt_tpl
from kv_transition.serve.protocol import ApiError, ChatBody, CompletionBody

# The template's fixed pieces, derived from data/prompt.py so a wording change flows through.
_CONTEXT_HEAD, _CONTEXT_TAIL = prompt_tpl.CONTEXT_TEMPLATE.split("{context}")
_QUESTION_HEAD, _after_question = prompt_tpl.QUESTION_TEMPLATE.split("{question}")
_ANSWER_CUE, _prefix_tail = _after_question.split("{prefix}")
_BOUNDARY = _CONTEXT_TAIL + _QUESTION_HEAD  # where the context ends and the question begins


@dataclass(frozen=True)
class ProjectPrompt:
    context: str
    question: str
    answer_prefix: str


@dataclass(frozen=True)
class PromptPlan:
    project: ProjectPrompt | None = None  # the harness's own template, split back
    text: str | None = None  # anything else: the exact text the model reads

    @property
    def kind(self) -> str:
        return "project" if self.project is not None else "text"


def parse_project_prompt(text: str) -> ProjectPrompt | None:
    """Invert ``full_prompt``; None unless re-rendering gives back exactly ``text``."""
    if not text.startswith(_CONTEXT_HEAD) or _prefix_tail and not text.endswith(_prefix_tail):
        return None
    cut = text.rfind(_BOUNDARY)  # the last one: the context may quote the template
    if cut < len(_CONTEXT_HEAD):
        return None
    context = text[len(_CONTEXT_HEAD):cut]
    rest = text[cut + len(_BOUNDARY):len(text) - len(_prefix_tail)]
    question, cue, suffix = rest.partition(_ANSWER_CUE)
    if not cue:
        return None
    prefix = suffix[1:] if suffix.startswith(" ") else suffix  # question_part adds one space
    found = ProjectPrompt(context, question, prefix)
    return found if prompt_tpl.full_prompt(context, question, prefix) == text else None


def plan_completion(body: CompletionBody) -> PromptPlan:
    text = body.text()
    project = parse_project_prompt(text)
    return PromptPlan(project=project) if project else PromptPlan(text=text)


def plan_chat(body: ChatBody, tokenizer, use_chat_template: bool) -> PromptPlan:
    messages = body.messages
    if len(messages) == 1 and messages[0].role == "user":
        project = parse_project_prompt(messages[0].text())
        if project:
            return PromptPlan(project=project)
        if not use_chat_template:
            return PromptPlan(text=messages[0].text())
    if not use_chat_template:
        raise ApiError(400, "this model has no chat template (or model.chat_template is 'off'), "
                       "so a chat request must be one user message; use /v1/completions for "
                       "anything else", param="messages")
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.text()} for m in messages], tokenize=False,
            add_generation_prompt=True)
    except Exception as exc:  # jinja raises whatever the template author chose
        raise ApiError(400, f"the model's chat template rejected these messages: {exc}",
                       param="messages") from None
    return PromptPlan(text=rendered)
