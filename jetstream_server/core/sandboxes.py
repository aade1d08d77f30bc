"""Sandbox mappings: which sandbox each user's files live in, a local folder or an S3 bucket.

A superuser sets the whole list with ``setSandboxMappings``; each entry names a ``user``
(``""``: every user without an entry of their own) and a sandbox:

- ``local``: a folder (``path``, with ``%u``, ``%d``, ``%f`` and ``%%`` as in
  ``--sandbox-dir``), which must exist;
- ``S3``: a ``bucket`` that must exist, a key prefix (``path``, placeholders expanded), and
  how to reach it: ``accessKeyId``, ``secretAccessKey`` and ``sessionToken`` (else the
  usual AWS chain: environment, ``~/.aws``, instance role), ``region`` (us-east-1),
  ``scheme`` (https), ``endpointOverride`` (MinIO, Ceph RGW, ...) and ``verifySsl`` (true).

A user with no entry, when there is no ``""`` entry, has ``--sandbox-dir``. The list is
kept in the state database with the secrets sealed (:mod:`.atrest`); ``getSandboxMappings``
shows it without them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import InvalidParameter, PathRefused, UnreadableSecret, quoted
from .atrest import SecretBox
from .sandbox import expand_sandbox, virtual_parts

__all__ = ["S3Sandbox", "Sandbox", "SandboxMappings"]

#: The fields of an S3 mapping that are secrets: stored sealed, never shown.
SECRET_FIELDS = ("secretAccessKey", "sessionToken")
_S3_FIELDS = ("bucket", "path", "accessKeyId", "secretAccessKey", "sessionToken", "region",
              "scheme", "endpointOverride", "verifySsl")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_ENDPOINT = re.compile(r"^(https?://)?(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+)(:[0-9]{1,5})?/?$")
MAX_MAPPINGS = 1000


@dataclass(frozen=True)
class S3Sandbox:
    """A user's sandbox in an S3 bucket: ``prefix`` is the key of what the user sees as
    ``/`` ("" or ending in ``/``)."""

    bucket: str
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str = "us-east-1"
    scheme: str = "https"
    endpoint_override: str | None = None
    verify_ssl: bool = True

    def key(self, parts: list[str]) -> str:
        """The object key of the path ``parts`` below the prefix."""
        return self.prefix + "/".join(parts)

    def url(self, key: str) -> str:
        """``s3://bucket/key``."""
        return f"s3://{self.bucket}/{key}"

    def under(self, path: str) -> S3Sandbox:
        """The sandbox of its folder ``path`` (a token's)."""
        parts = virtual_parts(path)
        return replace(self, prefix=self.key(parts) + "/") if parts else self

    @property
    def endpoint_url(self) -> str | None:
        """The endpoint's URL (None: AWS's own for the region)."""
        override = self.endpoint_override
        if override and "://" not in override:
            override = f"{self.scheme}://{override}"
        return override


#: A sandbox: a local folder's path, or a place in an S3 bucket.
Sandbox = str | S3Sandbox


@dataclass(frozen=True)
class _Mapping:
    user: str
    type: str  # "local" or "S3"
    fields: dict[str, Any]  # the API's fields, secrets in the clear

    def to_api(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.fields.items() if k not in SECRET_FIELDS}
        return {"user": self.user, "type": self.type, **shown}


class SandboxMappings:
    """The mappings in force (see the module's docstring); ``store`` keeps them."""

    def __init__(self, default: str, store: Any, secrets: SecretBox) -> None:
        """``default``: --sandbox-dir; ``store``: has ``setting`` and ``put_setting``."""
        self.default = default
        self._store = store
        self._secrets = secrets
        self._mappings: dict[str, _Mapping] = {}
        for raw in store.setting("sandboxMappings") or []:
            opened = dict(raw)
            try:
                for name in SECRET_FIELDS:
                    if name in opened:
                        opened[name] = secrets.open(opened[name], _context(raw, name))
            except UnreadableSecret:  # (a new secret key file): without its secrets
                opened = {k: v for k, v in opened.items() if k not in SECRET_FIELDS}
            mapping = _parse(opened)
            self._mappings[mapping.user] = mapping

    def to_api(self) -> list[dict[str, Any]]:
        """The mappings as the API shows them: without their secrets."""
        return [m.to_api() for m in self._mappings.values()]

    def replace(self, raw: Any) -> list[dict[str, Any]]:
        """Check and keep a new list (InvalidParameter, naming the entry, if it is bad)."""
        if not isinstance(raw, list):
            raise InvalidParameter("mappings must be a list of objects.")
        if len(raw) > MAX_MAPPINGS:
            raise InvalidParameter(f"At most {MAX_MAPPINGS} mappings.")
        mappings: dict[str, _Mapping] = {}
        for number, entry in enumerate(raw, 1):
            mapping = _parse(entry, number)
            if mapping.user in mappings:
                raise InvalidParameter(f"Mapping {number}: user {quoted(mapping.user)} is "
                                       "mapped twice.")
            mappings[mapping.user] = mapping
        self._mappings = mappings
        stored = []
        for mapping in mappings.values():
            body = {"user": mapping.user, "type": mapping.type, **mapping.fields}
            for name in SECRET_FIELDS:
                if name in body:
                    body[name] = self._secrets.seal(body[name], _context(body, name))
            stored.append(body)
        self._store.put_setting("sandboxMappings", stored)
        return self.to_api()

    def sandbox(self, user: str, path: str = "/") -> Sandbox:
        """The sandbox ``user`` sees as ``/`` (or its folder ``path``, a token's)."""
        mapping = self._mappings.get(user) or self._mappings.get("")
        if mapping is None or mapping.type == "local":
            template = self.default if mapping is None else mapping.fields["path"]
            root = expand_sandbox(template, user)
            parts = virtual_parts(path)
            return os.path.join(root, *parts) if parts else root
        f = mapping.fields
        parts = virtual_parts(expand_sandbox(f.get("path", ""), user))
        sandbox = S3Sandbox(
            bucket=f["bucket"], prefix="/".join(parts) + "/" if parts else "",
            access_key_id=f.get("accessKeyId"), secret_access_key=f.get("secretAccessKey"),
            session_token=f.get("sessionToken"), region=f.get("region", "us-east-1"),
            scheme=f.get("scheme", "https"), endpoint_override=f.get("endpointOverride"),
            verify_ssl=f.get("verifySsl", True))
        return sandbox.under(path)

    def kinds(self) -> dict[str, int]:
        """How many mappings of each type (for getServerInfo)."""
        out = {"local": 0, "S3": 0}
        for mapping in self._mappings.values():
            out[mapping.type] += 1
        return out


def _context(body: dict[str, Any], name: str) -> str:
    return f"sandbox:{body.get('user', '')}:{name}"


def _parse(entry: Any, number: int = 0) -> _Mapping:
    where = f"Mapping {number}" if number else "A stored mapping"
    if not isinstance(entry, dict):
        raise InvalidParameter(f"{where} must be an object.")
    user, kind = entry.get("user"), entry.get("type")
    if not isinstance(user, str):
        raise InvalidParameter(f"{where} needs \"user\", a string (\"\": every user).")
    if kind not in ("local", "S3"):
        raise InvalidParameter(f"{where}: \"type\" must be \"local\" or \"S3\", not "
                               f"{quoted(str(kind))}.")
    allowed = ("path",) if kind == "local" else _S3_FIELDS
    fields = {k: v for k, v in entry.items() if k not in ("user", "type")}
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidParameter(f"{where}: unknown field(s) {', '.join(unknown)} for a "
                               f"{kind} sandbox (it takes {', '.join(allowed)}).")
    for name, value in fields.items():
        wanted = bool if name == "verifySsl" else str
        if not isinstance(value, wanted):
            raise InvalidParameter(f"{where}: \"{name}\" must be "
                                   f"{'true or false' if wanted is bool else 'a string'}.")
    path = fields.get("path")
    if kind == "local":
        if not path or not path.startswith("/"):
            raise InvalidParameter(f"{where}: a local sandbox needs \"path\", an absolute "
                                   "folder path.")
    else:
        if not _BUCKET.match(fields.get("bucket", "")):
            raise InvalidParameter(f"{where}: \"bucket\" must be an S3 bucket name (3-63 "
                                   "lower-case letters, digits, dots and hyphens).")
        if fields.get("scheme", "https") not in ("http", "https"):
            raise InvalidParameter(f"{where}: \"scheme\" must be \"http\" or \"https\".")
        override = fields.get("endpointOverride")
        if override is not None and not _ENDPOINT.match(override):
            raise InvalidParameter(f"{where}: \"endpointOverride\" must be host[:port] or "
                                   "an http(s)://host[:port] URL.")
        if ("accessKeyId" in fields) != ("secretAccessKey" in fields):
            raise InvalidParameter(f"{where}: give accessKeyId and secretAccessKey "
                                   "together (or neither, for the AWS credential chain).")
    if path is not None:
        try:
            virtual_parts(path)
        except PathRefused as exc:
            raise InvalidParameter(f"{where}: {exc.message}") from None
    return _Mapping(user, kind, fields)
