"""Chat formatting: the SteerLM/Nemotron template that NeMo-Aligner's HelpSteer2 recipe trains with."""

from __future__ import annotations

import dataclasses
import re

DEFAULT_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
SYSTEM_HEADER = "<extra_id_0>System\n"
TURN_HEADER = "<extra_id_1>{role}\n"
END_OF_RESPONSE = "<extra_id_2>"
ROLES = ("User", "Assistant")

# HelpSteer2 multi-turn prompts embed earlier turns as "\n<extra_id_1>Assistant\n" / "\n<extra_id_1>User\n" lines.
_EMBEDDED_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n")


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str  # "User" or "Assistant"
    content: str


def split_helpsteer2_prompt(prompt: str) -> list[Turn]:
    """Turns of a HelpSteer2 ``prompt``: the first is the user's; embedded headers switch roles."""
    pieces = _EMBEDDED_TURN.split(prompt)
    turns = [Turn("User", pieces[0])]
    for role, content in zip(pieces[1::2], pieces[2::2]):
        turns.append(Turn(role, content))
    for previous, turn in zip(turns, turns[1:]):
        if previous.role == turn.role:
            raise ValueError(f"two consecutive '{turn.role}' turns in a HelpSteer2 prompt")
    if turns[-1].role != "User":
        raise ValueError("a HelpSteer2 prompt must end with a user turn")
    return turns


def format_context(turns: list[Turn], system: str = DEFAULT_SYSTEM) -> str:
    """Everything before the rated response, ending with the assistant header."""
    parts = [SYSTEM_HEADER, system, "\n"]
    for turn in turns:
        parts += [TURN_HEADER.format(role=turn.role), turn.content, "\n"]
    parts.append(TURN_HEADER.format(role="Assistant"))
    return "".join(parts)


def format_response(response: str) -> str:
    """The rated response and the end-of-response marker whose last token carries the reward."""
    return f"{response}\n{END_OF_RESPONSE}"


def format_example(prompt: str, response: str, system: str = DEFAULT_SYSTEM) -> tuple[str, str]:
    return format_context(split_helpsteer2_prompt(prompt), system), format_response(response)
