"""The API's commands: one module per family, and the one registry built from them.

:func:`build_registry` is what the server dispatches with (:mod:`.dispatch`) and what the
console reads parameter types and help from.
"""

from __future__ import annotations

from . import recv, send, server, tokens
from .registry import Registry

__all__ = ["build_registry"]


def build_registry() -> Registry:
    """Every command, with its parameters and help."""
    registry = Registry()
    for family in (server, send, recv, tokens):
        family.register(registry)
    return registry
