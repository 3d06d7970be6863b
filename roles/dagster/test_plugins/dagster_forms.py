"""Jinja tests for the forms the preflight checks inputs against (one place for every role).

Every role's play loads the `dagster` role first, so these are available to all of them:
    when: item is not dagster_ip_network
"""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PYTHON_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def ip_address(value) -> bool:
    """An IPv4 or IPv6 address, no prefix length."""
    try:
        ipaddress.ip_address(str(value))
    except ValueError:
        return False
    return True


def ip_network(value) -> bool:
    """An address or a network in CIDR form (host bits may be set: 10.0.0.5/24)."""
    try:
        ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return False
    return True


def hostname(value) -> bool:
    """A DNS name (RFC 1123 labels, 253 characters at most) or an IP address."""
    text = str(value)
    if ip_address(text):
        return True
    if not text or len(text) > 253 or re.fullmatch(r"[0-9.]+", text):
        return False  # all digits and dots: a malformed IPv4 address, not a name
    return all(_HOSTNAME_LABEL.match(label) for label in text.rstrip(".").split("."))


def port(value) -> bool:
    """A TCP port a service can listen on: an integer 1 to 65535."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def env_name(value) -> bool:
    """A name a process environment (and systemd's EnvironmentFile) accepts."""
    return bool(_ENV_NAME.match(str(value)))


def python_module(value) -> bool:
    """A dotted Python module path (package.module)."""
    return all(_PYTHON_NAME.match(part) for part in str(value).split("."))


def absolute_path(value) -> bool:
    """An absolute, normalised path without whitespace (systemd and YAML quote nothing)."""
    text = str(value)
    return (text.startswith("/") and not re.search(r"\s", text)
            and "/../" not in text + "/" and "/./" not in text + "/" and "//" not in text)


class TestModule:
    def tests(self):
        return {
            "dagster_ip_address": ip_address,
            "dagster_ip_network": ip_network,
            "dagster_hostname": hostname,
            "dagster_port": port,
            "dagster_env_name": env_name,
            "dagster_python_module": python_module,
            "dagster_absolute_path": absolute_path,
        }
