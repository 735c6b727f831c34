"""Process lifecycle flags that readiness depends on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Lifecycle:
    """Mutable on purpose: shutdown flips ``draining`` so readyz turns 503 first."""

    draining: bool = False
