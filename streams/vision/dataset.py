"""A labelled YOLO-format dataset of simulator frames, for training the shipped detector.

Each *scene* is one SUMO run (:class:`~simulators.intersection.sim.IntersectionSim`) with its
own seed, demand level, lighting, sensor noise, JPEG quality and a slightly moved camera.
Frames are rendered by the same :class:`~simulators.intersection.render.Renderer` the virtual
camera uses and stored as the JPEG bytes the camera would send.  Train and validation are
split *by scene* (no frame of a validation run is ever seen in training).

Labels skip boxes a detector cannot be asked to find: tiny ones, ones mostly outside the
image and vehicles mostly hidden behind nearer ones (visibility is measured on a label map
drawn in the renderer's far-to-near order).

Everything is deterministic by ``DatasetSpec.seed``.  Layout (ultralytics convention)::

    out/images/{train,val}/s<scene>_f<frame>.jpg
    out/labels/{train,val}/s<scene>_f<frame>.txt   # "cls cx cy w h", normalised
    out/data.yaml                                  # path, train, val, names
    out/dataset.json                               # scenes, counts per split and class
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from schemas.messages import VehicleClass

if TYPE_CHECKING:
    from simulators.intersection.render import Renderer
    from simulators.intersection.sim import SimStep

#: The classes the simulator renders, in the order of the dataset's class ids.
CLASSES: tuple[VehicleClass, ...] = (
    VehicleClass.motorbike,
    VehicleClass.car,
    VehicleClass.bus,
    VehicleClass.truck,
)
LIGHTING: tuple[str, ...] = ("day", "day", "dusk", "night")  # day twice as often


@dataclass(frozen=True)
class DatasetSpec:
    """What to generate.  ``frames`` is the total over train and validation."""

    frames: int = 1200
    scenes: int = 8
    val_scenes: int = 2
    width: int = 640
    height: int = 360
    every_s: float = 1.0
    warmup_s: float = 45.0
    min_box_px: float = 4.0
    min_visible: float = 0.4
    min_inside: float = 0.5
    #: Training images are ``tile`` x ``tile`` crops of the frames at native scale (0: whole
    #: frames).  A detector is fully convolutional: trained on crops it runs on whole frames at
    #: the frame's own size, and a training step on a 320 px crop costs a quarter of a 640 px one.
    tile: int = 320
    tiles_per_frame: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if not 1 <= self.val_scenes < self.scenes:
            raise ValueError(
                f"need 1 <= val_scenes < scenes, got val_scenes={self.val_scenes}, "
                f"scenes={self.scenes}"
            )
        if self.width < 64 or self.height < 64:
            raise ValueError(f"frame size {self.width}x{self.height} is too small")
        if self.every_s <= 0 or self.warmup_s < 0:
            raise ValueError("every_s must be > 0 and warmup_s >= 0")
        if self.tile and not 32 <= self.tile <= min(self.width, self.height):
            raise ValueError(
                f"tile {self.tile} must be 0 or within 32..{min(self.width, self.height)}"
            )
        if self.tiles_per_frame < 1:
            raise ValueError("tiles_per_frame must be >= 1")


@dataclass(frozen=True)
class Scene:
    """One simulator run of the dataset."""

    index: int
    split: str  # train | val
    sim_seed: int
    lighting: str
    demand_scale: float
    noise_sigma: float
    jpeg_quality: int
    camera_shift_m: tuple[float, float, float]
    hfov_deg: float
    frames: int


@dataclass(frozen=True)
class LabelBox:
    class_id: int
    xyxy: tuple[float, float, float, float]

    def yolo_line(self, width: int, height: int) -> str:
        x1, y1, x2, y2 = self.xyxy
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        return f"{self.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


@dataclass
class DatasetSummary:
    spec: DatasetSpec
    scenes: list[Scene]
    frames: dict[str, int] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {
                "spec": asdict(self.spec),
                "classes": [c.value for c in CLASSES],
                "scenes": [asdict(s) for s in self.scenes],
                "frames": self.frames,
                "images": self.images,
                "boxes": self.boxes,
                "skipped": self.skipped,
            },
            indent=2,
        )


def plan_scenes(spec: DatasetSpec) -> list[Scene]:
    """The scenes of ``spec``: the last ``val_scenes`` are held out for validation."""
    rng = np.random.default_rng(spec.seed)
    per_scene = [spec.frames // spec.scenes] * spec.scenes
    for k in range(spec.frames % spec.scenes):
        per_scene[k] += 1
    scenes = []
    for k in range(spec.scenes):
        split = "val" if k >= spec.scenes - spec.val_scenes else "train"
        scenes.append(
            Scene(
                index=k,
                split=split,
                sim_seed=int(spec.seed * 1000 + k + 1),
                # the validation scenes cover day and night whatever the seed
                lighting=(
                    ("day", "night", "dusk")[(k - (spec.scenes - spec.val_scenes)) % 3]
                    if split == "val"
                    else LIGHTING[k % len(LIGHTING)]
                ),
                demand_scale=round(float(rng.uniform(0.5, 1.6)), 3),
                noise_sigma=round(float(rng.uniform(1.0, 8.0)), 2),
                jpeg_quality=int(rng.integers(60, 93)),
                camera_shift_m=(
                    round(float(rng.uniform(-2.0, 2.0)), 2),
                    round(float(rng.uniform(-3.0, 3.0)), 2),
                    round(float(rng.uniform(-2.0, 2.0)), 2),
                ),
                hfov_deg=round(float(rng.uniform(60.0, 72.0)), 1),
                frames=per_scene[k],
            )
        )
    return scenes


def visible_boxes(
    renderer: Renderer, step: SimStep, spec: DatasetSpec, skipped: Counter[str] | None = None
) -> list[LabelBox]:
    """The labels of one rendered step, with tiny, off-image and hidden vehicles left out.

    Mirrors :meth:`Renderer.render`: each vehicle is the convex hull of its projected 3-D box,
    painted far to near; a vehicle's visibility is the share of its hull no nearer vehicle
    covers.  Boxes are the projected box's extent clipped to the image.
    """
    import cv2

    cam = renderer.cam
    w, h = cam.width, cam.height
    items = []
    for veh in step.vehicles:
        if veh.vehicle_class not in CLASSES:
            continue
        uv, z = cam.project(renderer.box_corners(veh))
        if np.any(z < cam.near_m):
            continue
        x1, y1 = uv.min(axis=0)
        x2, y2 = uv.max(axis=0)
        if x2 < 0 or y2 < 0 or x1 >= w or y1 >= h:
            continue
        items.append((float(z.mean()), veh, uv))
    items.sort(key=lambda it: -it[0])
    label_map = np.full((h, w), -1, dtype=np.int32)
    hulls = []
    for k, (_, _, uv) in enumerate(items):
        hull = cv2.convexHull(np.round(uv).astype(np.int32))
        hulls.append(hull)
        cv2.fillConvexPoly(label_map, hull, k)
    visible = np.bincount(label_map[label_map >= 0].ravel(), minlength=len(items))
    skip: Counter[str] = skipped if skipped is not None else Counter()
    out = []
    for k, (_, veh, uv) in enumerate(items):
        hull = hulls[k]
        bx, by, bw, bh = cv2.boundingRect(hull)
        # hull area inside the image, from a small local mask
        x0, y0 = max(bx, 0), max(by, 0)
        x1c, y1c = min(bx + bw, w), min(by + bh, h)
        if x1c <= x0 or y1c <= y0:
            skip["off_image"] += 1
            continue
        local = np.zeros((y1c - y0, x1c - x0), dtype=np.uint8)
        cv2.fillConvexPoly(local, hull - np.array([x0, y0], dtype=np.int32), 1)
        area_in = int(local.sum())
        (ux1, uy1), (ux2, uy2) = uv.min(axis=0), uv.max(axis=0)
        cx1, cy1 = max(float(ux1), 0.0), max(float(uy1), 0.0)
        cx2, cy2 = min(float(ux2), w - 1.0), min(float(uy2), h - 1.0)
        inside = (cx2 - cx1) * (cy2 - cy1) / max((ux2 - ux1) * (uy2 - uy1), 1e-9)
        if inside < spec.min_inside:
            skip["off_image"] += 1
        elif min(cx2 - cx1, cy2 - cy1) < spec.min_box_px:
            skip["tiny"] += 1
        elif area_in == 0 or visible[k] / area_in < spec.min_visible:
            skip["hidden"] += 1
        else:
            cid = CLASSES.index(veh.vehicle_class)
            out.append(LabelBox(cid, (cx1, cy1, cx2, cy2)))
    return out


def tile_origins(spec: DatasetSpec, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Top-left corners of a frame's training tiles: spread evenly across the width (they
    overlap when the width is not a multiple of the tile) at random heights."""
    n, t = spec.tiles_per_frame, spec.tile
    xs = np.linspace(0, spec.width - t, n).round().astype(int) if n > 1 else [(spec.width - t) // 2]
    return [(int(x), int(rng.integers(0, spec.height - t + 1))) for x in xs]


def crop_boxes(
    boxes: Sequence[LabelBox], x0: int, y0: int, size: int, spec: DatasetSpec
) -> list[LabelBox]:
    """Boxes of a ``size`` square crop at (x0, y0): clipped, and dropped when less than
    ``min_inside`` of the box or less than ``min_box_px`` of a side remains."""
    out = []
    for b in boxes:
        x1, y1, x2, y2 = b.xyxy
        cx1, cy1 = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
        cx2, cy2 = min(x2 - x0, size - 1.0), min(y2 - y0, size - 1.0)
        if cx2 - cx1 < spec.min_box_px or cy2 - cy1 < spec.min_box_px:
            continue
        if (cx2 - cx1) * (cy2 - cy1) < spec.min_inside * (x2 - x1) * (y2 - y1):
            continue
        out.append(LabelBox(b.class_id, (cx1, cy1, cx2, cy2)))
    return out


def _camera_and_renderer(scene: Scene, spec: DatasetSpec, net_file: str, cfg: object) -> Renderer:
    from simulators.intersection.calibration import build_calibration
    from simulators.intersection.camera import VirtualCamera
    from simulators.intersection.render import RenderConfig, Renderer
    from simulators.intersection.sim import ScenarioConfig

    assert isinstance(cfg, ScenarioConfig)
    base = VirtualCamera()
    dx, dy, dz = scene.camera_shift_m
    cam = VirtualCamera(
        position=(base.position[0] + dx, base.position[1] + dy, base.position[2] + dz),
        target=base.target,
        width=spec.width,
        height=spec.height,
        hfov_deg=scene.hfov_deg,
    )
    render_cfg = RenderConfig(
        noise_sigma=scene.noise_sigma,
        lighting=scene.lighting,
        jpeg_quality=scene.jpeg_quality,
        seed=scene.sim_seed,
    )
    return Renderer(cam, net_file, build_calibration(cfg, cam, net_file), render_cfg)


def generate_scene(
    scene: Scene, spec: DatasetSpec, out: Path, summary: DatasetSummary | None = None
) -> int:
    """Run one scene and write its frames and labels; returns the number of frames."""
    from simulators.intersection.sim import IntersectionSim, ScenarioConfig

    base = ScenarioConfig()
    cfg = replace(
        base,
        seed=scene.sim_seed,
        demand_veh_h=tuple((arm, vph * scene.demand_scale) for arm, vph in base.demand_veh_h),
    )
    img_dir = out / "images" / scene.split
    lbl_dir = out / "labels" / scene.split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    every = max(1, round(spec.every_s / cfg.step_s))
    warm = round(spec.warmup_s / cfg.step_s)
    skipped: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    written = 0
    images = 0
    tile_rng = np.random.default_rng(scene.sim_seed)
    tiled = spec.tile > 0 and scene.split == "train"
    with IntersectionSim(cfg) as sim:
        renderer = _camera_and_renderer(scene, spec, str(sim.net_file), cfg)
        total = warm + every * scene.frames
        for i, step in enumerate(sim.run(total * cfg.step_s)):
            if i < warm or (i - warm) % every:
                continue
            img, _ = renderer.render(step)
            boxes = visible_boxes(renderer, step, spec, skipped)
            name = f"s{scene.index:02d}_f{written:05d}"
            jpeg = renderer.encode(img)
            if tiled:
                import cv2

                # crop what the camera sends (its JPEG artefacts included)
                frame = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
                if frame is None:
                    raise RuntimeError("a rendered frame did not decode")
                for k, (x0, y0) in enumerate(tile_origins(spec, tile_rng)):
                    crop = frame[y0 : y0 + spec.tile, x0 : x0 + spec.tile]
                    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 95])
                    if not ok:
                        raise RuntimeError("JPEG encoding of a tile failed")
                    tb = crop_boxes(boxes, x0, y0, spec.tile, spec)
                    (img_dir / f"{name}_t{k}.jpg").write_bytes(bytes(buf))
                    (lbl_dir / f"{name}_t{k}.txt").write_text(
                        "".join(b.yolo_line(spec.tile, spec.tile) + "\n" for b in tb)
                    )
                    counts.update(CLASSES[b.class_id].value for b in tb)
                    images += 1
            else:
                (img_dir / f"{name}.jpg").write_bytes(jpeg)
                (lbl_dir / f"{name}.txt").write_text(
                    "".join(b.yolo_line(spec.width, spec.height) + "\n" for b in boxes)
                )
                counts.update(CLASSES[b.class_id].value for b in boxes)
                images += 1
            written += 1
            if written == scene.frames:
                break
    if summary is not None:
        summary.images[scene.split] = summary.images.get(scene.split, 0) + images
        summary.frames[scene.split] = summary.frames.get(scene.split, 0) + written
        split_counts = summary.boxes.setdefault(scene.split, {})
        for cname, v in counts.items():
            split_counts[cname] = split_counts.get(cname, 0) + v
        for reason, v in skipped.items():
            summary.skipped[reason] = summary.skipped.get(reason, 0) + v
    return written


def write_data_yaml(out: Path, classes: Sequence[VehicleClass] = CLASSES) -> Path:
    path = out / "data.yaml"
    names = "\n".join(f"  {i}: {c.value}" for i, c in enumerate(classes))
    path.write_text(
        f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}\n"
    )
    return path


def generate_dataset(spec: DatasetSpec, out: Path) -> DatasetSummary:
    """Generate every scene of ``spec`` into ``out`` (which must be empty or absent)."""
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"dataset directory {out} is not empty")
    summary = DatasetSummary(spec, plan_scenes(spec))
    for scene in summary.scenes:
        generate_scene(scene, spec, out, summary)
    write_data_yaml(out)
    (out / "dataset.json").write_text(summary.to_json())
    return summary


def median_box_size(summary_dir: Path, split: str = "val") -> dict[str, tuple[float, float]]:
    """Median box width/height in pixels per class of a generated whole-frame split."""
    spec = json.loads((summary_dir / "dataset.json").read_text())["spec"]
    sizes: dict[int, list[tuple[float, float]]] = {}
    for f in sorted((summary_dir / "labels" / split).glob("*.txt")):
        for line in f.read_text().splitlines():
            c, _, _, bw, bh = line.split()
            sizes.setdefault(int(c), []).append(
                (float(bw) * spec["width"], float(bh) * spec["height"])
            )
    return {
        CLASSES[c].value: (
            round(float(np.median([s[0] for s in v])), 1),
            round(float(np.median([s[1] for s in v])), 1),
        )
        for c, v in sorted(sizes.items())
    }


def read_labels(path: Path, width: int, height: int) -> npt.NDArray[np.float64]:
    """A label file as (N, 5) rows ``cls x1 y1 x2 y2`` in pixels."""
    rows = [list(map(float, line.split())) for line in path.read_text().splitlines() if line]
    if not rows:
        return np.zeros((0, 5))
    a = np.array(rows)
    cx, cy, bw, bh = a[:, 1] * width, a[:, 2] * height, a[:, 3] * width, a[:, 4] * height
    return np.column_stack([a[:, 0], cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
