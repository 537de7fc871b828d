"""Signal groups of the intersection and SignalPlan <-> SUMO traffic-light programs.

A signal group is ``<arm>_<movement>`` (``S_through``, ``N_left``...): the links of one
approach that make the same movement.  Left turns are permissive (SUMO ``g``: green, yield
to oncoming traffic); through and right movements get ``G``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sumolib

from schemas.messages import PhaseTiming, SignalPlan, SignalState

_DIRS = {"s": "through", "l": "left", "r": "right", "t": "u_turn", "L": "left", "R": "right"}
_STATE = {
    "G": SignalState.green,
    "g": SignalState.green,
    "y": SignalState.amber,
    "Y": SignalState.amber,
    "r": SignalState.red,
    "u": SignalState.red,
    "o": SignalState.off,
    "O": SignalState.off,
    "s": SignalState.green,
}


@dataclass(frozen=True)
class Link:
    index: int
    in_lane: str
    out_lane: str
    arm: str
    movement: str

    @property
    def group(self) -> str:
        return f"{self.arm}_{self.movement}"


def read_links(net_file: str, tls_id: str = "C") -> list[Link]:
    """The controlled links of the traffic light, in link-index order."""
    net = sumolib.net.readNet(net_file)
    links = []
    for in_lane, out_lane, idx in net.getTLS(tls_id).getConnections():
        direction = "s"
        for c in in_lane.getEdge().getConnections(out_lane.getEdge()):
            if c.getFromLane() == in_lane and c.getToLane() == out_lane:
                direction = c.getDirection()
        arm = in_lane.getEdge().getID().split("_")[0]
        links.append(
            Link(idx, in_lane.getID(), out_lane.getID(), arm, _DIRS.get(direction, "through"))
        )
    return sorted(links, key=lambda k: k.index)


def group_states(state: str, links: list[Link]) -> dict[str, SignalState]:
    """SUMO state string -> state per signal group (a group is green if any link is)."""
    out: dict[str, SignalState] = {}
    for link in links:
        s = _STATE.get(state[link.index], SignalState.off)
        prev = out.get(link.group)
        if prev is None or s is SignalState.green:
            out[link.group] = s
    return out


def default_plan(
    intersection_id: str,
    valid_from: datetime,
    ns_green: float = 30,
    ew_green: float = 30,
    amber: float = 3,
    all_red: float = 2,
    plan_id: str = "fixed-1",
) -> SignalPlan:
    """The two-phase fixed plan: north-south, then east-west (all movements)."""
    ns = [f"{a}_{m}" for a in "NS" for m in ("through", "left", "right")]
    ew = [f"{a}_{m}" for a in "EW" for m in ("through", "left", "right")]
    return SignalPlan(
        intersection_id=intersection_id,
        plan_id=plan_id,
        cycle_s=ns_green + ew_green + 2 * (amber + all_red),
        phases=[
            PhaseTiming(
                name="NS", signal_groups=ns, green_s=ns_green, amber_s=amber, all_red_s=all_red
            ),
            PhaseTiming(
                name="EW", signal_groups=ew, green_s=ew_green, amber_s=amber, all_red_s=all_red
            ),
        ],
        valid_from=valid_from,
    )


def sumo_phases(plan: SignalPlan, links: list[Link]) -> list[tuple[float, str]]:
    """(duration, state) of each SUMO phase: green, amber, all-red per plan phase."""
    out: list[tuple[float, str]] = []
    for ph in plan.phases:
        groups = set(ph.signal_groups)
        green = "".join(
            ("g" if k.movement == "left" else "G") if k.group in groups else "r" for k in links
        )
        amber = "".join("y" if k.group in groups else "r" for k in links)
        out.append((ph.green_s, green))
        if ph.amber_s > 0:
            out.append((ph.amber_s, amber))
        if ph.all_red_s > 0:
            out.append((ph.all_red_s, "r" * len(links)))
    return out
