"""What a command handler gets besides its parameters: :class:`Call`."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.service import Fire, Service, Session
from ..errors import AuthRequired

__all__ = ["Call"]


@dataclass
class Call:
    """The control plane a command acts on, the session that asked, and where trigger
    events go."""

    service: Service
    session: Session
    fire: Fire

    @property
    def user(self) -> str:
        if self.session.user is None:  # dispatch checks auth before handlers run
            raise AuthRequired("Authenticate first with auth.")
        return self.session.user
