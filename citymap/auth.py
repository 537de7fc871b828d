"""Roles and tokens: who may see and do what.

=========  ==========================================================================
role       may
=========  ==========================================================================
operator   read traffic (with plates and evidence), review violations, approve or
           reject signal plans, read energy, read and acknowledge traffic/camera alerts
utility    read energy (loads, forecasts, accuracy, CSV), read alerts, acknowledge
           energy alerts; no violations
viewer     read traffic and energy without plates or evidence; no writes
=========  ==========================================================================

A token comes as ``Authorization: Bearer <token>``, or as ``?access_token=`` (the browser's
EventSource and download links cannot set headers).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from citystream.settings import TokenGrant


class Role(StrEnum):
    operator = "operator"
    utility = "utility"
    viewer = "viewer"


ALL = frozenset(Role)
TRAFFIC_READ = frozenset({Role.operator, Role.viewer, Role.utility})
VIOLATIONS_READ = frozenset({Role.operator, Role.viewer})
EVIDENCE = frozenset({Role.operator})
TRAFFIC_WRITE = frozenset({Role.operator})
ENERGY_READ = frozenset({Role.utility, Role.operator, Role.viewer})
AUDIT_READ = frozenset({Role.operator, Role.utility})

#: Which role may acknowledge an alert from which source.
ACK_BY_SOURCE: dict[str, frozenset[Role]] = {
    "traffic": frozenset({Role.operator}),
    "camera": frozenset({Role.operator}),
    "energy": frozenset({Role.utility}),
    "platform": frozenset({Role.operator, Role.utility}),
}


@dataclass(frozen=True)
class Principal:
    """The holder of a valid token."""

    name: str
    role: Role

    @property
    def sees_evidence(self) -> bool:
        return self.role in EVIDENCE


class TokenBook:
    """Looks tokens up in constant time per comparison (no timing oracle on the secret)."""

    def __init__(self, grants: Iterable[TokenGrant]) -> None:
        self._grants = tuple(grants)

    def __len__(self) -> int:
        return len(self._grants)

    def lookup(self, token: str) -> Principal | None:
        found: Principal | None = None
        for g in self._grants:
            if hmac.compare_digest(g.token.encode(), token.encode()):
                found = Principal(g.name, Role(g.role))
        return found


def token_from(authorization: str | None, access_token: str | None) -> str | None:
    """The token of a request: the Bearer header wins over the query parameter."""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    return access_token or None


def allowed(principal: Principal, roles: frozenset[Role]) -> bool:
    return principal.role in roles


def describe(roles: frozenset[Role]) -> str:
    return " or ".join(sorted(r.value for r in roles))


RoleCheck = Callable[[Principal], bool]
