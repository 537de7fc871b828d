"""The SUMO network of a signalised 4-way intersection, built explicitly with netconvert.

Node ``C`` (type ``traffic_light``) sits at the ground origin; arms ``N``, ``E``, ``S``, ``W``
reach ``arm_length_m`` out.  Each arm has an incoming edge ``<A>_in`` and an outgoing edge
``<A>_out``.  With ``bus_lane`` the south approach gets an extra rightmost lane that only
buses may use.  Coordinates are kept as given (no offset), so SUMO x/y = ground metres.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

ARMS: dict[str, tuple[float, float]] = {"N": (0, 1), "E": (1, 0), "S": (0, -1), "W": (-1, 0)}


@dataclass(frozen=True)
class NetworkSpec:
    arm_length_m: float = 150.0
    lanes_in: int = 2
    lanes_out: int = 2
    speed_limit_kmh: float = 50.0
    bus_lane: bool = True  # south approach
    lane_width_m: float = 3.2

    @property
    def key(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:12]


def _netconvert() -> str:
    import sumo

    return str(Path(sumo.SUMO_HOME) / "bin" / "netconvert")


def build_network(spec: NetworkSpec, workdir: Path) -> Path:
    """Write the plain XML files and run netconvert; returns the ``.net.xml`` (cached)."""
    workdir.mkdir(parents=True, exist_ok=True)
    net = workdir / f"intersection-{spec.key}.net.xml"
    if net.exists():
        return net
    length = spec.arm_length_m
    nodes = ['<node id="C" x="0" y="0" type="traffic_light" tl="C"/>']
    for arm, (dx, dy) in ARMS.items():
        nodes.append(f'<node id="{arm}" x="{dx * length}" y="{dy * length}" type="priority"/>')
    speed = spec.speed_limit_kmh / 3.6
    edges = []
    for arm in ARMS:
        n_in = spec.lanes_in + (1 if spec.bus_lane and arm == "S" else 0)
        lanes = ""
        if spec.bus_lane and arm == "S":
            lanes = '><lane index="0" allow="bus"/></edge>'
        edges.append(
            f'<edge id="{arm}_in" from="{arm}" to="C" numLanes="{n_in}" speed="{speed:.3f}" '
            f'width="{spec.lane_width_m}"' + (lanes or "/>")
        )
        edges.append(
            f'<edge id="{arm}_out" from="C" to="{arm}" numLanes="{spec.lanes_out}" '
            f'speed="{speed:.3f}" width="{spec.lane_width_m}"/>'
        )
    conns = ""
    if spec.bus_lane:  # all south connections explicit: the bus lane never turns left
        n = spec.lanes_in
        pairs = [(0, "N_out", 0), (0, "E_out", 0)]  # bus lane: straight or right
        pairs += [(1, "N_out", 0), (1, "E_out", min(1, spec.lanes_out - 1))]
        for k in range(2, n + 1):
            pairs.append((k, "N_out", min(k - 1, spec.lanes_out - 1)))
        pairs.append((n, "W_out", spec.lanes_out - 1))
        conns = "".join(
            f'<connection from="S_in" to="{to}" fromLane="{a}" toLane="{b}"/>\n'
            for a, to, b in pairs
        )
    (workdir / "i.con.xml").write_text("<connections>\n" + conns + "</connections>\n")
    (workdir / "i.nod.xml").write_text("<nodes>\n" + "\n".join(nodes) + "\n</nodes>\n")
    (workdir / "i.edg.xml").write_text("<edges>\n" + "\n".join(edges) + "\n</edges>\n")
    tmp = net.with_suffix(".tmp.xml")
    subprocess.run(
        [
            _netconvert(),
            "--node-files",
            str(workdir / "i.nod.xml"),
            "--edge-files",
            str(workdir / "i.edg.xml"),
            "--connection-files",
            str(workdir / "i.con.xml"),
            "--output-file",
            str(tmp),
            "--offset.disable-normalization",
            "true",
            "--no-turnarounds",
            "true",
            "--tls.default-type",
            "static",
            "--junctions.corner-detail",
            "5",
            "--no-warnings",
            "true",
        ],
        check=True,
        capture_output=True,
    )
    tmp.replace(net)
    return net
