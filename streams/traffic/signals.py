"""The signal state of each signal group over time, from controller phase changes."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

from schemas.messages import SignalPhaseChange, SignalState


@dataclass
class SignalTimeline:
    """Per signal group, the sorted (time, state) changes; query the state at any time."""

    _changes: dict[str, list[tuple[float, SignalState]]] = field(default_factory=dict)

    @classmethod
    def from_changes(cls, changes: Iterable[SignalPhaseChange]) -> SignalTimeline:
        tl = cls()
        for c in changes:
            tl.add(c.signal_group, c.changed_at.timestamp(), c.state)
        return tl

    def add(self, group: str, t: float, state: SignalState) -> None:
        lst = self._changes.setdefault(group, [])
        if lst and t >= lst[-1][0]:
            if lst[-1][1] != state:
                lst.append((t, state))
            return
        bisect.insort(lst, (t, state), key=lambda c: c[0])

    @property
    def groups(self) -> list[str]:
        return sorted(self._changes)

    def state_at(self, group: str, t: float) -> SignalState | None:
        """The group's state at ``t``; None before its first known change."""
        since = self.since(group, t)
        return None if since is None else since[0]

    def since(self, group: str, t: float) -> tuple[SignalState, float] | None:
        """The state at ``t`` and when it began."""
        lst = self._changes.get(group)
        if not lst:
            return None
        i = bisect.bisect_right(lst, t, key=lambda c: c[0]) - 1
        if i < 0:
            return None
        return lst[i][1], lst[i][0]

    def prune(self, before: float) -> None:
        """Forget changes older than ``before``, keeping the one in force then."""
        for group, lst in self._changes.items():
            i = bisect.bisect_right(lst, before, key=lambda c: c[0]) - 1
            if i > 0:
                self._changes[group] = lst[i:]
