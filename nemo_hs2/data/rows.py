"""A rated row, independent of where it was read from: a conversation ending with the rated response, and labels."""

from __future__ import annotations

import dataclasses

from nemo_hs2.core.conversation import Conversation


@dataclasses.dataclass(frozen=True)
class Example:
    conversation: Conversation  # its last turn is the rated response
    labels: dict[str, float]  # attribute name -> score; an absent name is a missing (masked) label
    source: str = "<memory>"  # file the row came from, for error messages
    line: int = 0  # 1-based line (or row) number in ``source``
    pair_id: int = -1  # rows rating two responses to the same prompt share it; -1 when unpaired

    @classmethod
    def rated(cls, prompt: str, response: str, labels: dict[str, float], source: str = "<memory>", line: int = 0,
              pair_id: int = -1) -> Example:
        """A HelpSteer2-style row: ``prompt`` (earlier turns embedded SteerLM-style) and its ``response``."""
        return cls(Conversation.from_helpsteer2(prompt, response), labels, source, line, pair_id)

    @property
    def prompt(self) -> str:
        """The context as a HelpSteer2 ``prompt`` (rows read from HelpSteer2 files give back their field)."""
        return self.conversation.helpsteer2_prompt()

    @property
    def response(self) -> str:
        return self.conversation.response

    @property
    def context(self):
        return self.conversation.context
