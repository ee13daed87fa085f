"""A rated conversation: the one shape every data source, scorer, server route and export agrees on.

Turns have the roles ``system``, ``user`` and ``assistant`` (OpenAI / Hugging Face messages). A conversation may open
with one system turn; then user and assistant alternate, starting with the user, and the last turn is the assistant
response being rated. Anything else is refused here, once, with the turn named, so no caller has its own idea of
what a valid conversation is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

ROLES = ("system", "user", "assistant")

# HelpSteer2 multi-turn prompts embed earlier turns as "\n<extra_id_1>Assistant\n" / "\n<extra_id_1>User\n" lines
# (the SteerLM template's turn headers; see nemo_hs2.core.render).
_EMBEDDED_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


class ConversationError(ValueError):
    """A conversation that breaks the rules above; ``turn`` is the 0-based index of the offending turn (or None)."""

    def __init__(self, detail: str, turn: int | None = None):
        super().__init__(detail if turn is None else f"turn {turn}: {detail}")
        self.turn = turn
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str
    content: str


@dataclasses.dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]

    def __post_init__(self):
        check_turns(self.turns)

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_messages(cls, messages: Sequence[Mapping]) -> Conversation:
        """``[{"role": ..., "content": ...}, ...]`` ending with the rated assistant turn."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise ConversationError(f"expected a list of {{role, content}} turns, got {type(messages).__name__}")
        turns = []
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ConversationError(f"expected an object {{role, content}}, got {type(m).__name__}", i)
            role, content = m.get("role"), m.get("content")
            if not isinstance(role, str) or not isinstance(content, str):
                raise ConversationError("expected {'role': str, 'content': str}", i)
            turns.append(Turn(role, content))
        return cls(tuple(turns))

    @classmethod
    def from_context(cls, context: Sequence[Mapping], response: str) -> Conversation:
        """A context (turns ending with the user's) and the assistant response rated after it."""
        return cls.from_messages([*context, {"role": "assistant", "content": response}])

    @classmethod
    def from_helpsteer2(cls, prompt: str, response: str) -> Conversation:
        """HelpSteer2's ``prompt`` (earlier turns embedded with SteerLM turn headers) and its rated ``response``."""
        pieces = _EMBEDDED_TURN.split(prompt)
        turns = [Turn("user", pieces[0])]
        turns += [Turn(role.lower(), content) for role, content in zip(pieces[1::2], pieces[2::2])]
        return cls((*turns, Turn("assistant", response)))

    # ------------------------------------------------------------------------------------------ views
    @property
    def system(self) -> str | None:
        """The conversation's own system turn, if it opens with one."""
        return self.turns[0].content if self.turns[0].role == "system" else None

    @property
    def dialogue(self) -> tuple[Turn, ...]:
        """User and assistant turns, the system turn left out."""
        return self.turns[1:] if self.turns[0].role == "system" else self.turns

    @property
    def response(self) -> str:
        return self.turns[-1].content

    @property
    def context(self) -> tuple[Turn, ...]:
        return self.turns[:-1]

    def helpsteer2_prompt(self) -> str:
        """The context as HelpSteer2 writes a ``prompt`` (the inverse of ``from_helpsteer2``)."""
        if self.system is not None:
            raise ConversationError("a HelpSteer2 prompt has no place for a system turn")
        first, *rest = self.context
        return first.content + "".join(f"\n<extra_id_1>{t.role.capitalize()}\n{t.content}" for t in rest)

    def messages(self, system: str | None = None) -> list[dict[str, str]]:
        """OpenAI-style messages; ``system`` is added as the first turn when the conversation has none."""
        out = [{"role": t.role, "content": t.content} for t in self.turns]
        if system is not None and self.system is None:
            out.insert(0, {"role": "system", "content": system})
        return out


def check_turns(turns: Sequence[Turn]) -> None:
    if not turns:
        raise ConversationError("empty conversation")
    for i, t in enumerate(turns):
        if t.role not in ROLES:
            raise ConversationError(f"role {t.role!r} is not one of {ROLES}", i)
        if not isinstance(t.content, str):
            raise ConversationError(f"content must be a string, got {type(t.content).__name__}", i)
    offset = 1 if turns[0].role == "system" else 0
    for i, t in enumerate(turns[offset:], start=offset):
        expected = ("user", "assistant")[(i - offset) % 2]
        if t.role != expected:
            why = ("a system turn is allowed only first" if t.role == "system"
                   else "user and assistant turns alternate, starting with the user")
            raise ConversationError(f"role '{t.role}' where '{expected}' was expected ({why})", i)
    if len(turns) == offset or turns[-1].role != "assistant":
        raise ConversationError("the last turn must be the assistant response to rate")
