"""``data.template=hf_chat``: format rows with a Hugging Face tokenizer's own chat template (Llama-3 style).

The HelpSteer2 prompt is split into its turns (``split_helpsteer2_prompt``), the rated response becomes the last
assistant turn, and the whole conversation is rendered by ``apply_chat_template`` and tokenized in one piece. The
reward is read at the last token of the rendered text (for Llama 3, the ``<|eot_id|>`` closing the rated turn);
over-length rows lose tokens from the left, so that token always survives.
"""

from __future__ import annotations

import hashlib

from nemo_hs2.data.examples import Example
from nemo_hs2.data.template import split_helpsteer2_prompt

_ROLES = {"User": "user", "Assistant": "assistant"}
# Longest text a template may put after the rated response: its end-of-turn marker and a newline or two.
_MAX_SUFFIX = 64


def hf_tokenizer_of(tokenizer):
    """The Hugging Face tokenizer behind ``tokenizer``: itself, or NeMo's ``AutoTokenizer.tokenizer``."""
    for candidate in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if candidate is not None and hasattr(candidate, "apply_chat_template"):
            if not getattr(candidate, "chat_template", None):
                raise ValueError(f"data.template=hf_chat: the tokenizer ({type(candidate).__name__}) has no chat "
                                 f"template; set one (model.tokenizer.chat_template) or use data.template=steerlm")
            return candidate
    raise ValueError(f"data.template=hf_chat needs a Hugging Face tokenizer with a chat template "
                     f"(model.tokenizer.library=huggingface); got {type(tokenizer).__name__}")


def chat_messages(prompt: str, response: str, system: str | None = None) -> list[dict[str, str]]:
    """OpenAI-style messages: optional system, the prompt's alternating turns, then the rated response."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": _ROLES[t.role], "content": t.content} for t in split_helpsteer2_prompt(prompt)]
    messages.append({"role": "assistant", "content": response})
    return messages


class ChatTemplateFormat:
    name = "hf_chat"

    def __init__(self, tokenizer, system: str | None = None):
        self.hf = hf_tokenizer_of(tokenizer)
        self.system = system

    def render(self, prompt: str, response: str) -> str:
        return self.render_messages(chat_messages(prompt, response, self.system))

    def render_messages(self, messages: list[dict[str, str]]) -> str:
        """A conversation already in ``{"role", "content"}`` form (inference), ending with the rated turn."""
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("the last message must be the assistant response to be scored")
        response = messages[-1]["content"]
        text = self.hf.apply_chat_template(list(messages), tokenize=False)
        # Some templates drop or rewrite a trailing assistant turn (generation-only templates) or append more text;
        # the reward would then be read somewhere other than the end of the rated response.
        rated = response.strip()
        at = text.rfind(rated)
        if at < 0 or len(text) - (at + len(rated)) > _MAX_SUFFIX:
            raise ValueError("the chat template did not render the rated response as the last assistant turn")
        return text

    def ids(self, ex: Example) -> list[int]:
        return self.encode(self.render(ex.prompt, ex.response))

    def encode(self, text: str) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=False))

    def identity(self) -> dict:
        return {"template": self.name, "system": self.system,
                "chat_template_sha256": hashlib.sha256(str(self.hf.chat_template).encode()).hexdigest()}
