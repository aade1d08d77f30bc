"""The sending servers this server trusts by their keys (``recv.addAuthorizedClientAsync``).

A sending server proves its key in every session's handshake. A key on this list may send
without credentials, as the sending user's name; with ``allowOnlyAuthorizedClients`` on,
a key not on it is refused even with valid credentials. Both are kept in the state
database (settings ``authorizedClients`` and ``allowOnlyAuthorizedClients``), so they
survive restarts.
"""

from __future__ import annotations

from typing import Any, Protocol

from .ids import now_us

__all__ = ["AuthorizedClients", "SettingsStore"]


class SettingsStore(Protocol):
    """Where the list is kept (the state store's settings)."""

    def setting(self, key: str) -> Any:
        """A stored setting, or None."""
        ...

    def put_setting(self, key: str, value: Any) -> None:
        """Store a setting."""
        ...


class AuthorizedClients:
    """The authorized clients and the restriction to them, stored in ``store``."""

    def __init__(self, store: SettingsStore) -> None:
        self._store = store
        self._clients: dict[str, dict[str, Any]] = {
            entry["clientPublicKey"]: entry
            for entry in store.setting("authorizedClients") or []}
        self.only_authorized: bool = bool(store.setting("allowOnlyAuthorizedClients"))

    def trusts(self, key: str) -> bool:
        """Whether the sending server with public key ``key`` (text) is authorized."""
        return key in self._clients

    def clients(self) -> list[dict[str, Any]]:
        """The authorized clients, oldest first: ``clientPublicKey``, ``creationTime``,
        ``owner`` (who added it)."""
        return [dict(entry) for entry in self._clients.values()]

    def add(self, key: str, owner: str) -> dict[str, Any]:
        """Authorize ``key`` (idempotent: an existing entry is kept as it is)."""
        entry = self._clients.get(key)
        if entry is None:
            entry = self._clients[key] = {"clientPublicKey": key, "creationTime": now_us(),
                                          "owner": owner}
            self._save()
        return dict(entry)

    def remove(self, key: str) -> dict[str, Any] | None:
        """Take ``key`` off the list; what was there, if anything."""
        entry = self._clients.pop(key, None)
        if entry is not None:
            self._save()
        return entry

    def restrict(self, enable: bool) -> None:
        """Accept senders only by an authorized key (True), or by credentials too."""
        self.only_authorized = enable
        self._store.put_setting("allowOnlyAuthorizedClients", enable)

    def _save(self) -> None:
        self._store.put_setting("authorizedClients", list(self._clients.values()))
