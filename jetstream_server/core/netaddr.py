"""Small helpers for network addresses."""

from __future__ import annotations

import ipaddress

__all__ = ["host_name_problem", "host_port", "is_loopback", "plain_host"]


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback addresses."""
    address = _address(host)
    return address is not None and address.is_loopback


def plain_host(host: str) -> str:
    """IPv4-mapped IPv6 addresses (from dual-stack sockets) as plain IPv4."""
    address = _address(host)
    return host if address is None or ":" not in host or address.version == 6 else \
        str(address)


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:8886``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def host_name_problem(host: str) -> str | None:
    """Why ``host`` cannot be a host name or IP address to connect to, or None if it can:
    a name is at most 253 characters (as IDNA ASCII), of dot-separated labels of 1 to 63."""
    if _address(host) is not None:
        return None
    if not host or any(c.isspace() or not c.isprintable() for c in host):
        return "a host name has no spaces or control characters"
    try:
        ascii_name = host.rstrip(".").encode("idna")
    except UnicodeError:
        return "each dot-separated part of a host name is 1 to 63 characters"
    if len(ascii_name) > 253:
        return "a host name is at most 253 characters"
    return None
