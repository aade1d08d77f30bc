"""What a command handler gets besides its parameters: :class:`Call`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import AuthRequired

if TYPE_CHECKING:  # (the console reads the commands' table without loading the service)
    from ..core.service import Fire, Service, Session

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

    @property
    def who(self) -> str:
        """The user, and the token it logged in with (for logs)."""
        token = self.session.token
        return self.user if token is None else f"{self.user} (token {token.id})"
