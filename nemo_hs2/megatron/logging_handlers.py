"""The console handlers of Lightning and NeMo, created up front so ``nemo_hs2.cli.console`` can filter them."""

from __future__ import annotations


def create_third_party_handlers() -> None:
    import lightning.pytorch  # noqa: F401  (adds its console handler on import when the root has none)
    from nemo.utils import logging  # noqa: F401  (NeMo's console handlers)
