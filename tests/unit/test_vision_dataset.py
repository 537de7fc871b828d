"""The simulator dataset: scenes, split by run, label filtering, crops, determinism."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from schemas.messages import VehicleClass
from streams.vision.dataset import (
    CLASSES,
    DatasetSpec,
    LabelBox,
    crop_boxes,
    plan_scenes,
    read_labels,
    tile_origins,
)


def test_scenes_split_by_run_and_cover_lighting() -> None:
    spec = DatasetSpec(frames=101, scenes=8, val_scenes=2, seed=3)
    scenes = plan_scenes(spec)
    assert sum(s.frames for s in scenes) == 101
    assert [s.split for s in scenes] == ["train"] * 6 + ["val"] * 2
    assert len({s.sim_seed for s in scenes}) == 8
    assert {s.lighting for s in scenes if s.split == "train"} == {"day", "dusk", "night"}
    assert [s.lighting for s in scenes if s.split == "val"] == ["day", "night"]
    assert all(0.5 <= s.demand_scale <= 1.6 and 60 <= s.jpeg_quality <= 92 for s in scenes)
    assert plan_scenes(spec) == scenes
    assert plan_scenes(replace(spec, seed=4)) != scenes


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frames": 1},
        {"scenes": 2, "val_scenes": 2},
        {"val_scenes": 0},
        {"width": 32},
        {"tile": 400},  # larger than the 360 px frame height
        {"every_s": 0},
    ],
)
def test_spec_rejects_bad_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DatasetSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ((10.0, 10.0, 30.0, 40.0), (10.0, 10.0, 30.0, 40.0)),  # inside: unchanged
        ((90.0, 10.0, 110.0, 40.0), (90.0, 10.0, 99.0, 40.0)),  # 45 % inside: kept, clipped
        ((96.0, 10.0, 116.0, 40.0), None),  # 3 px of 20 inside: dropped
        ((-15.0, 50.0, 5.0, 70.0), None),  # a quarter inside: dropped
        ((-5.0, 50.0, 15.0, 70.0), (0.0, 50.0, 15.0, 70.0)),  # three quarters inside: clipped
    ],
)
def test_crop_boxes(
    box: tuple[float, float, float, float], expected: tuple[float, ...] | None
) -> None:
    spec = DatasetSpec(min_inside=0.4)
    out = crop_boxes([LabelBox(1, box)], 0, 0, 100, spec)
    if expected is None:
        assert out == []
    else:
        assert len(out) == 1 and out[0].class_id == 1
        assert out[0].xyxy == pytest.approx(expected)


def test_crop_offsets_boxes_into_the_tile() -> None:
    out = crop_boxes([LabelBox(0, (110.0, 60.0, 130.0, 90.0))], 100, 50, 64, DatasetSpec())
    assert out[0].xyxy == pytest.approx((10.0, 10.0, 30.0, 40.0))


def test_tile_origins_stay_in_the_frame() -> None:
    spec = DatasetSpec(width=640, height=360, tile=320, tiles_per_frame=3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        origins = tile_origins(spec, rng)
        assert [x for x, _ in origins] == [0, 160, 320]
        assert all(0 <= y <= 40 for _, y in origins)


def test_yolo_line_round_trips(tmp_path: Path) -> None:
    boxes = [LabelBox(0, (10.0, 20.0, 30.0, 60.0)), LabelBox(3, (100.5, 0.0, 640.0, 359.0))]
    f = tmp_path / "a.txt"
    f.write_text("".join(b.yolo_line(640, 360) + "\n" for b in boxes))
    rows = read_labels(f, 640, 360)
    assert rows[:, 0].tolist() == [0, 3]
    np.testing.assert_allclose(rows[:, 1:], [b.xyxy for b in boxes], atol=1e-3)
    (tmp_path / "empty.txt").write_text("")
    assert read_labels(tmp_path / "empty.txt", 640, 360).shape == (0, 5)


def test_classes_are_the_simulated_vehicle_classes() -> None:
    assert (
        VehicleClass.motorbike,
        VehicleClass.car,
        VehicleClass.bus,
        VehicleClass.truck,
    ) == CLASSES


# --- with the simulator -------------------------------------------------------------------
libsumo = pytest.importorskip("libsumo")


def _vehicle(track_id: int, cls: VehicleClass, x: float, y: float, length: float) -> object:
    from simulators.intersection.sim import HEIGHT_M, VehicleState

    return VehicleState(
        vehicle_id=f"v{track_id}",
        track_id=track_id,
        vehicle_class=cls,
        x=x,
        y=y,
        angle_deg=0.0,
        speed_mps=5.0,
        length_m=length,
        width_m=2.5 if cls is VehicleClass.bus else 0.8,
        height_m=HEIGHT_M[cls.value],
        lane_id="S_in_0",
    )


def test_visible_boxes_skip_hidden_tiny_and_off_image(tmp_path: Path) -> None:
    from collections import Counter

    from simulators.intersection.calibration import build_calibration
    from simulators.intersection.camera import VirtualCamera
    from simulators.intersection.render import Renderer
    from simulators.intersection.sim import IntersectionSim, ScenarioConfig, SimStep
    from streams.vision.dataset import visible_boxes

    cfg = ScenarioConfig(workdir=tmp_path)
    sim = IntersectionSim(cfg)  # builds the network; SUMO is not started
    cam = VirtualCamera(width=640, height=360)
    renderer = Renderer(cam, str(sim.net_file), build_calibration(cfg, cam, str(sim.net_file)))
    # the camera looks north from (13, -72) at (0, -22): a bus near it hides a motorbike
    # just behind it; a motorbike 400 m away is a few pixels; one behind the camera is out
    vehicles = [
        _vehicle(1, VehicleClass.bus, 8.0, -40.0, 11.0),
        _vehicle(2, VehicleClass.motorbike, 8.0, -35.0, 2.0),  # behind the bus (from here)
        _vehicle(3, VehicleClass.motorbike, 2.0, -30.0, 2.0),  # in the clear
        _vehicle(4, VehicleClass.motorbike, 0.0, 400.0, 2.0),  # far away: tiny
        _vehicle(5, VehicleClass.car, 13.0, -90.0, 4.5),  # behind the camera
    ]
    step = SimStep(0.0, 0.0, vehicles, {}, [])  # type: ignore[arg-type]
    skipped: Counter[str] = Counter()
    boxes = visible_boxes(renderer, step, DatasetSpec(), skipped)
    kept = sorted(b.class_id for b in boxes)
    assert kept == [CLASSES.index(VehicleClass.motorbike), CLASSES.index(VehicleClass.bus)]
    assert skipped["hidden"] == 1 and skipped["tiny"] == 1
    for b in boxes:
        x1, y1, x2, y2 = b.xyxy
        assert 0 <= x1 < x2 <= 639 and 0 <= y1 < y2 <= 359


def test_generate_dataset_is_deterministic(tmp_path: Path) -> None:
    from streams.vision.dataset import generate_dataset

    spec = DatasetSpec(frames=6, scenes=3, val_scenes=1, warmup_s=30.0, every_s=2.0, seed=7)
    a = generate_dataset(spec, tmp_path / "a")
    b = generate_dataset(spec, tmp_path / "b")
    assert a.frames == {"train": 4, "val": 2} and a.images == {"train": 12, "val": 2}
    assert a.boxes == b.boxes and sum(a.boxes["train"].values()) > 0
    for sub in ("labels/train", "labels/val"):
        names = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "b" / sub).iterdir())
        for n in names:
            assert (tmp_path / "a" / sub / n).read_text() == (tmp_path / "b" / sub / n).read_text()
    import cv2

    tile = cv2.imread(str(next((tmp_path / "a" / "images" / "train").glob("*.jpg"))))
    frame = cv2.imread(str(next((tmp_path / "a" / "images" / "val").glob("*.jpg"))))
    assert tile.shape == (320, 320, 3) and frame.shape == (360, 640, 3)
    yaml = (tmp_path / "a" / "data.yaml").read_text()
    assert "train: images/train" in yaml and "3: truck" in yaml
    with pytest.raises(FileExistsError):
        generate_dataset(spec, tmp_path / "a")


def test_train_cli_end_to_end(tmp_path: Path) -> None:
    """``citystream vision train`` on a toy budget: dataset, training, weights, card."""
    pytest.importorskip("ultralytics")
    from citystream.cli import main
    from streams.vision.yolo import YoloDetector

    out = tmp_path / "run"
    argv = ["vision", "train", "--out", str(out), "--frames", "12", "--scenes", "3"]
    argv += ["--val-scenes", "1", "--epochs", "1", "--imgsz", "128", "--tile", "64"]
    argv += ["--batch", "8", "--workers", "0", "--device", "cpu", "--name", "toy"]
    assert main(argv) == 0
    weights = out / "toy.pt"
    det = YoloDetector(weights, device="cpu")
    assert det.imgsz == 128  # the frame width, not the 64 px crops it was trained on
    assert [c.value for c in det.classes] == ["motorbike", "car", "bus", "truck"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "| **all** |" in card and "split **by run** (2 / 1)" in card
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["imgsz"] == 128 and metrics["val_images"] == 4
    assert 0.0 <= metrics["overall"]["map50"] <= 1.0
