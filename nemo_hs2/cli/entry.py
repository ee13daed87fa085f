"""The one way into nemo_hs2 from the command line: every ``examples/*.py`` is a function wrapped by ``hydra_entry``.

It registers the config resolvers, composes ``conf/<config_name>.yaml`` with the command line's overrides, holds back
known-benign third-party console chatter (``verbose=true`` shows it), and turns a user error -- a bad config, a bad
row, a missing file, a refused checkpoint -- into one line ``<entry>: error: <what>`` and exit status 1, without a
traceback (``verbose=true`` prints it too). Anything else is a bug and keeps its traceback. The task function
returns an exit status (``None`` is 0), e.g. 75 for a pre-empted run.
"""

from __future__ import annotations

import functools
import sys
import traceback
from pathlib import Path

from nemo_hs2.core.rank import global_rank, is_main_rank
from nemo_hs2.core.resolvers import register_resolvers

CONF = Path(__file__).resolve().parents[2] / "conf"
EXIT_USER_ERROR = 1


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the input is wrong", not "nemo_hs2 is broken"."""
    from omegaconf.errors import OmegaConfBaseException

    from nemo_hs2.data.records import HubUnavailableError

    errors: list[type[BaseException]] = [ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
                                         IsADirectoryError, HubUnavailableError, OmegaConfBaseException]
    if "nemo_hs2.megatron.compat" in sys.modules:  # only entries that touch the stack can hit a version refusal
        errors.append(sys.modules["nemo_hs2.megatron.compat"].CompatError)
    return tuple(errors)


def report_user_error(name: str, error: BaseException, verbose: bool) -> int:
    if verbose:
        traceback.print_exception(error)
    rank = global_rank()
    where = f" (rank {rank})" if rank else ""
    hint = "" if verbose else " [verbose=true shows the traceback]"
    print(f"{name}{where}: error: {error}{hint}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def hydra_entry(config_name: str, name: str | None = None, quiet: bool = True):
    """Decorator for an entry function ``fn(cfg) -> int | None``; the result is the script's ``main()``."""

    def wrap(fn):
        label = name or config_name

        @functools.wraps(fn)
        def task(cfg) -> None:
            verbose = bool(cfg.get("verbose", False))
            if quiet:
                from nemo_hs2.cli import console

                console.install(verbose)
            try:
                status = fn(cfg)
            except user_errors() as e:
                status = report_user_error(label, e, verbose)
            if status:
                sys.exit(status)

        def main() -> None:
            import hydra

            register_resolvers()
            hydra.main(config_path=str(CONF), config_name=config_name, version_base="1.3")(task)()

        main.task = task  # for callers that already hold a composed config
        return main

    return wrap


def print_main(*lines) -> None:
    """Print on rank 0 only (every rank of a model-parallel launch computes the same result)."""
    if is_main_rank():
        print(*lines, flush=True)
