"""The one path from a conversation to text and token ids, for training, scoring, serving, annotation and export.

Two templates:

* ``steerlm``: the SteerLM / Nemotron format of NeMo-Aligner's HelpSteer2 recipe
  (``<extra_id_0>System\\n{system}\\n<extra_id_1>User\\n{...}\\n<extra_id_1>Assistant\\n{response}\\n<extra_id_2>``);
* ``hf_chat``: the Hugging Face tokenizer's own ``chat_template`` (e.g. Llama 3's), rendered with
  ``apply_chat_template``.

The text is always tokenized whole, as NeMo-Aligner's ``RegressionRewardModelDataset`` encodes its "text": encoding
context and response apart gives other ids on real tokenizers (a BPE merge across the boundary, a SentencePiece
dummy prefix before the response), and a model must see at training the ids its scorer and server will send it.

**The system prompt rule** (``system_prompt``, saved in the checkpoint as ``model.system_prompt``): a conversation's
own leading system turn always wins. Otherwise a string -- the empty string included -- is the system turn, rendered
as given; ``None`` means the template's default: steerlm's ``DEFAULT_SYSTEM`` (its format always has a system
block), and no system turn at all for hf_chat (the chat template's own convention applies). ``system_turn`` is that
rule; nothing else decides it.
"""

from __future__ import annotations

import hashlib
import json

from nemo_hs2.core.conversation import Conversation

TEMPLATES = ("steerlm", "hf_chat")
DEFAULT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SYSTEM_HEADER = "<extra_id_0>System\n"
TURN_HEADER = "<extra_id_1>{role}\n"
END_OF_RESPONSE = "<extra_id_2>"
_STEERLM_ROLES = {"user": "User", "assistant": "Assistant"}
# Longest text a chat template may put after the rated response: its end-of-turn marker and a newline or two.
_MAX_SUFFIX = 64


def check_template(template: str) -> str:
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    return template


def system_turn(template: str, system_prompt: str | None) -> str | None:
    """The system turn a conversation without its own gets (the rule in the module docstring)."""
    check_template(template)
    if system_prompt is not None:
        return str(system_prompt)
    return DEFAULT_SYSTEM if template == "steerlm" else None


def steerlm_text(conversation: Conversation, system: str) -> str:
    parts = [SYSTEM_HEADER, system, "\n"]
    for turn in conversation.dialogue:
        parts += [TURN_HEADER.format(role=_STEERLM_ROLES[turn.role]), turn.content, "\n"]
    parts.append(END_OF_RESPONSE)
    return "".join(parts)


def hf_tokenizer_of(tokenizer):
    """The Hugging Face tokenizer behind ``tokenizer`` (itself, or NeMo's ``AutoTokenizer.tokenizer``) for hf_chat."""
    for candidate in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if candidate is not None and hasattr(candidate, "apply_chat_template"):
            if not getattr(candidate, "chat_template", None):
                raise ValueError(f"template=hf_chat: the tokenizer ({type(candidate).__name__}) has no chat template; "
                                 "set one (model.tokenizer.chat_template) or use template=steerlm")
            return candidate
    raise ValueError(f"template=hf_chat needs a Hugging Face tokenizer with a chat template "
                     f"(model.tokenizer.library=huggingface); got {type(tokenizer).__name__}")


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a formatted text: NeMo's ``text_to_ids`` (as NeMo-Aligner's datasets call it) or, for a bare Hugging
    Face tokenizer, ``encode`` without special tokens (the template already wrote any BOS it wants). The only call
    into a tokenizer's encoder in nemo_hs2."""
    if hasattr(tokenizer, "text_to_ids"):
        return [int(i) for i in tokenizer.text_to_ids(text)]
    if hasattr(tokenizer, "encode"):
        return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    raise TypeError(f"{type(tokenizer).__name__} has neither text_to_ids nor encode")


class Renderer:
    """``text`` / ``ids`` of conversations for one (template, tokenizer, system prompt)."""

    def __init__(self, template: str, tokenizer, system_prompt: str | None = None):
        self.template = check_template(template or "steerlm")
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.system = system_turn(self.template, system_prompt)
        self.hf = hf_tokenizer_of(tokenizer) if self.template == "hf_chat" else None

    def text(self, conversation: Conversation) -> str:
        if self.template == "steerlm":
            return steerlm_text(conversation, conversation.system if conversation.system is not None else self.system)
        text = self.hf.apply_chat_template(conversation.messages(self.system), tokenize=False)
        # Some templates drop or rewrite a trailing assistant turn (generation-only templates) or append more text;
        # the reward would then be read somewhere other than the end of the rated response.
        rated = conversation.response.strip()
        at = text.rfind(rated)
        if at < 0 or len(text) - (at + len(rated)) > _MAX_SUFFIX:
            raise ValueError("the chat template did not render the rated response as the last assistant turn")
        return text

    def ids(self, conversation: Conversation) -> list[int]:
        return self.encode(self.text(conversation))

    def encode(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    def identity(self) -> dict:
        """What the ids depend on besides the tokenizer (part of the tokenized-cache key)."""
        out = {"template": self.template, "system": self.system, "encoding": "whole_text"}
        if self.hf is not None:
            out["chat_template_sha256"] = hashlib.sha256(str(self.hf.chat_template).encode()).hexdigest()
        return out


# ------------------------------------------------------------------------------------------------ exported template
def steerlm_chat_template(system: str) -> str:
    """``steerlm_text`` as a Jinja chat template, ``system`` its default system turn (what export writes)."""
    q = json.dumps  # Jinja string literals are JSON-compatible for these texts
    return ("{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
            "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = " + q(system) + " -%}"
            "{%- set turns = messages -%}{%- endif -%}"
            "{{- " + q(SYSTEM_HEADER) + " + system + '\\n' -}}"
            "{%- for m in turns -%}"
            "{{- " + q(TURN_HEADER.format(role="User")) + " if m['role'] == 'user' else "
            + q(TURN_HEADER.format(role="Assistant")) + " -}}"
            "{{- m['content'] + '\\n' -}}"
            "{%- if loop.last and m['role'] == 'assistant' -%}{{- " + q(END_OF_RESPONSE) + " -}}{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- " + q(TURN_HEADER.format(role="Assistant")) + " -}}{%- endif -%}")


def with_system_turn(template: str, system: str) -> str:
    """A chat template that gets ``system`` as its first message when the conversation has none."""
    return ("{%- if messages[0]['role'] != 'system' -%}{%- set messages = [{'role': 'system', 'content': "
            + json.dumps(system) + "}] + messages -%}{%- endif -%}" + template)


def export_chat_template(template: str, system_prompt: str | None, tokenizer_chat_template: str | None) -> str:
    """The ``chat_template`` an exported tokenizer carries: renders exactly what ``Renderer.text`` renders."""
    system = system_turn(template, system_prompt)
    if template == "steerlm":
        return steerlm_chat_template(system)
    if not tokenizer_chat_template:
        raise ValueError("template=hf_chat but the tokenizer has no chat_template")
    return tokenizer_chat_template if system is None else with_system_turn(tokenizer_chat_template, system)
