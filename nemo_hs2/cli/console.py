"""A readable console: third-party chatter of the CPU path is held back here, counted and summarised in one line.

Quiet (the default): the console shows nemo_hs2's own messages, every warning not listed in ``BENIGN``, every error,
and the progress bars. Held back: third-party INFO (NeMo's parallel-group listings, optimizer dumps, Lightning's
device banner and model summary, ...) and the warnings listed below, each with why it is benign here. ``verbose=true``
shows everything. Only console handlers are filtered (NeMo's log files still get every record), and nothing at ERROR
or above is ever held back.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter

from nemo_hs2.core.rank import global_rank


@dataclasses.dataclass(frozen=True)
class Benign:
    name: str
    pattern: str
    why: str


BENIGN = (
    Benign("config-mapping", r"does not have field\.name: \w+ in its cfg",
           "NeMo names every megatron-core TransformerConfig field the model config leaves at megatron-core's "
           "default; the model is built with those defaults on purpose"),
    Benign("fresh-run", r"There were no checkpoints found in checkpoint_dir",
           "resume=auto on a run directory without checkpoints: a new run starts from scratch, as asked"),
    Benign("monitor-before-epoch", r"checkpoint callback was told to monitor a validation value and trainer's "
                                   r"max_steps",
           "NeMo-Aligner validates and checkpoints on its own step schedule, not at Lightning's epoch ends"),
    Benign("experimental-sampler", r"MegatronPretrainingRandomBatchSampler.*is experimental",
           "the random batch sampler of NeMo-Aligner's reward-model recipe (our length-grouped sampler extends it)"),
    Benign("manual-optimization", r"lr scheduler dict contains the key\(s\) \['monitor', 'reduce_on_plateau'\]",
           "NeMo-Aligner steps the LR scheduler itself (manual optimization), so Lightning's keys are unused"),
)
_BENIGN_RE = [(b.name, re.compile(b.pattern)) for b in BENIGN]

OWN = "nemo_hs2"
log = logging.getLogger(OWN)  # nemo_hs2's own messages: shown in quiet mode


class QuietFilter(logging.Filter):
    """Drops third-party INFO / DEBUG and the ``BENIGN`` warnings; counts each record once."""

    def __init__(self):
        super().__init__()
        self.hidden: Counter = Counter()
        self.info = 0
        self.rank = global_rank()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        own = record.name == OWN or record.name.startswith(OWN + ".")
        if record.levelno < logging.WARNING:
            if own and self.rank == 0:  # other ranks would repeat rank 0's lines
                return True
            self._count(record, "info")
            return False
        if not own:
            message = record.getMessage()
            for name, regex in _BENIGN_RE:
                if regex.search(message):
                    self._count(record, name)
                    return False
        return True

    def _count(self, record: logging.LogRecord, what: str) -> None:
        if getattr(record, "_nemo_hs2_counted", False):  # a record can reach several console handlers
            return
        record._nemo_hs2_counted = True
        if what == "info":
            self.info += 1
        else:
            self.hidden[what] += 1

    def summary(self) -> str | None:
        if not self.hidden and not self.info:
            return None
        warnings = sum(self.hidden.values())
        parts = ", ".join(f"{name} {n}" for name, n in self.hidden.most_common())
        return (f"quiet: held back {warnings} known-benign warning(s)" + (f" ({parts})" if parts else "")
                + f" and {self.info} third-party info line(s); verbose=true shows them (why each is benign: "
                "nemo_hs2/cli/console.py)")


_FILTER: QuietFilter | None = None


def console_handlers() -> list[logging.Handler]:
    """Every handler that writes to a terminal stream (not files, not NeMo's in-memory buffers)."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    return [h for lg in loggers for h in lg.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]


def install(verbose: bool = False) -> QuietFilter | None:
    """Filter the console from now on (unless ``verbose``). Call it once logging is set up: inside the Hydra
    entry point, after NeMo is imported; it imports Lightning so that Lightning's own handler exists too."""
    global _FILTER
    if verbose:
        return None
    from nemo_hs2.megatron.logging_handlers import create_third_party_handlers

    create_third_party_handlers()

    if _FILTER is None:
        _FILTER = QuietFilter()
    for handler in console_handlers():
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    log.setLevel(logging.INFO)
    return _FILTER


def summary() -> str | None:
    """The one line that says what was held back (None when nothing was, or when verbose)."""
    return _FILTER.summary() if _FILTER is not None else None
