"""The YOLO backend: agrees with ultralytics' own predict, batches, bad frames, class mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streams.vision.yolo import prepare_ultralytics

prepare_ultralytics()  # before ultralytics is imported: offline, settings out of ~/.config
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("libsumo")

from citystream.errors import ConfigError  # noqa: E402
from citystream.settings import VisionSettings  # noqa: E402
from schemas.messages import VehicleClass  # noqa: E402
from streams.vision.detections import Detections  # noqa: E402
from streams.vision.detector import DecodeFailure, load_detector  # noqa: E402
from streams.vision.yolo import (  # noqa: E402
    SHIPPED_WEIGHTS,
    Letterbox,
    YoloDetector,
    box_appearance,
    class_mapping,
    jpeg_dimensions,
)

COCO_VEHICLES = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle", 5: "bus", 6: "train"}
COCO_VEHICLES |= {7: "truck", 4: "airplane", 8: "boat"}


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """Six busy 640x360 simulator frames (day and night) as the camera encodes them."""
    from simulators.intersection.calibration import build_calibration
    from simulators.intersection.camera import VirtualCamera
    from simulators.intersection.render import RenderConfig, Renderer
    from simulators.intersection.sim import IntersectionSim, ScenarioConfig

    cfg = ScenarioConfig(seed=11, workdir=tmp_path_factory.mktemp("sim"))
    cam = VirtualCamera(width=640, height=360)
    out = []
    with IntersectionSim(cfg) as sim:
        cal = build_calibration(cfg, cam, str(sim.net_file))
        day = Renderer(cam, str(sim.net_file), cal, RenderConfig(lighting="day"))
        night = Renderer(cam, str(sim.net_file), cal, RenderConfig(lighting="night"))
        for i, step in enumerate(sim.run(70)):
            if i >= 400 and i % 50 == 0:
                r = day if len(out) % 2 == 0 else night
                out.append(r.encode(r.render(step)[0]))
    assert len(out) == 6
    return out


@pytest.fixture(scope="module")
def detector() -> YoloDetector:
    if not SHIPPED_WEIGHTS.is_file():
        pytest.fail(f"the shipped model {SHIPPED_WEIGHTS} is missing")
    return YoloDetector(device="cpu")


def _bgr(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def _match(
    a: Detections,
    b: Detections,
    min_iou: float = 0.9,
    conf_tol: float = 0.03,
    same_class: bool = True,
) -> float:
    """Share of ``a``'s boxes that have a box in ``b`` with IoU >= min_iou, a confidence
    within ``conf_tol`` and (``same_class``) the same class."""
    if len(a) == 0:
        return 1.0
    from streams.vision.tracking import box_iou

    iou = box_iou(a.xyxy, b.xyxy) if len(b) else np.zeros((len(a), 0))
    ok = 0
    for i in range(len(a)):
        same = np.abs(b.confidence - a.confidence[i]) < conf_tol
        if same_class:
            same &= b.class_id == a.class_id[i]
        ok += bool(np.any(same & (iou[i] >= min_iou)))
    return ok / len(a)


# --- pure parts ---------------------------------------------------------------------------
def test_class_mapping_of_a_coco_model() -> None:
    classes, lookup = class_mapping(COCO_VEHICLES)
    assert classes == [
        VehicleClass.motorbike,
        VehicleClass.car,
        VehicleClass.bus,
        VehicleClass.truck,
        VehicleClass.bicycle,
        VehicleClass.person,
    ]
    named = {i: (classes[j].value if j >= 0 else None) for i, j in enumerate(lookup)}
    assert named == {
        0: "person",
        1: "bicycle",
        2: "car",
        3: "motorbike",
        4: None,
        5: "bus",
        6: None,
        7: "truck",
        8: None,
    }
    assert class_mapping(["Motorbike", "car"]) == (
        [VehicleClass.motorbike, VehicleClass.car],
        [0, 1],
    )


@pytest.mark.parametrize(
    ("hw", "imgsz"), [((360, 640), 640), ((720, 1280), 640), ((333, 500), 640), ((480, 640), 320)]
)
def test_letterbox_geometry_is_ultralytics(hw: tuple[int, int], imgsz: int) -> None:
    prepare_ultralytics()
    from ultralytics.data.augment import LetterBox

    ref = LetterBox(imgsz, auto=True, stride=32).get_params({"img": np.zeros((*hw, 3), np.uint8)})
    ours = Letterbox.plan(hw[0], hw[1], imgsz, 32)
    assert (ours.new_width, ours.new_height) == ref["new_unpad"]
    assert (ours.top, ours.bottom, ours.left, ours.right) == (
        ref["top"],
        ref["bottom"],
        ref["left"],
        ref["right"],
    )


def _huge(jpeg: bytes) -> bytes:
    """``jpeg`` with its frame header claiming 60000 x 60000 pixels."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[: i + 5] + (60000).to_bytes(2, "big") * 2 + jpeg[i + 9 :]


def test_jpeg_dimensions_from_the_header() -> None:
    ok, buf = cv2.imencode(".jpg", np.zeros((7, 9, 3), np.uint8))
    assert ok and jpeg_dimensions(bytes(buf)) == (9, 7)
    assert jpeg_dimensions(_huge(bytes(buf))) == (60000, 60000)
    ok, buf = cv2.imencode(".jpg", np.zeros((70, 90), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and jpeg_dimensions(bytes(buf)) == (90, 70)
    for bad in (b"", b"\xff\xd8", b"\xff\xd8garbage", b"GIF89a"):
        assert jpeg_dimensions(bad) is None


# --- the shipped model --------------------------------------------------------------------
def test_shipped_model_settings(detector: YoloDetector) -> None:
    assert detector.device == "cpu" and detector.half is False and detector.gpu_decode is False
    assert list(detector.classes) == [
        VehicleClass.motorbike,
        VehicleClass.car,
        VehicleClass.bus,
        VehicleClass.truck,
    ]
    assert detector.imgsz == 640  # the trained inference size, recorded in the weights
    assert detector.model_version.startswith("citystream-sim-yolo11n@")


def test_agrees_with_ultralytics_predict(detector: YoloDetector, frames: list[bytes]) -> None:
    from ultralytics import YOLO  # type: ignore[attr-defined]

    ours = detector.detect_jpegs(frames)
    model = YOLO(str(SHIPPED_WEIGHTS))
    results = model.predict(
        [_bgr(f) for f in frames], imgsz=detector.imgsz, conf=detector.conf, iou=detector.iou,
        device="cpu", verbose=False,
    )  # fmt: skip
    total = 0
    for o, r in zip(ours, results, strict=True):
        assert isinstance(o, Detections)
        ref = Detections(
            r.boxes.xyxy.numpy(), r.boxes.conf.numpy(), r.boxes.cls.numpy().astype(np.int64)
        )  # the shipped model's class ids are the project's classes, in the same order
        total += len(ref)
        assert abs(len(o) - len(ref)) <= max(1, len(ref) // 20)
        assert _match(o, ref) >= 0.95 and _match(ref, o) >= 0.95
        assert np.all(o.xyxy[:, 2] <= 640) and np.all(o.xyxy[:, 3] <= 360)
        assert np.all(np.diff(o.confidence) <= 0)  # sorted by confidence
    assert total >= 20  # busy frames: the comparison is about real detections


def test_batch_equals_one_by_one_and_bad_frames_fail_alone(
    detector: YoloDetector, frames: list[bytes]
) -> None:
    truncated = frames[2][: len(frames[2]) // 8]
    batch = [frames[0], b"", frames[1], b"not a jpeg", truncated, _huge(frames[3])]
    out = detector.detect_jpegs(batch)
    assert len(out) == 6
    assert isinstance(out[1], DecodeFailure) and "empty" in out[1].reason
    assert isinstance(out[3], DecodeFailure) and "JPEG" in out[3].reason
    assert isinstance(out[5], DecodeFailure) and "60000x60000" in out[5].reason
    for i, f in ((0, frames[0]), (2, frames[1])):
        (alone,) = detector.detect_jpegs([f])
        assert isinstance(out[i], Detections) and isinstance(alone, Detections)
        assert len(out[i]) > 0
        assert _match(out[i], alone, 0.98) >= 0.95 and _match(alone, out[i], 0.98) >= 0.95
    assert isinstance(out[4], Detections | DecodeFailure)  # truncated: either, never a crash
    assert detector.detect_jpegs([]) == []


def test_appearance_is_the_colour_of_the_box_inside(
    detector: YoloDetector, frames: list[bytes]
) -> None:
    # two frames: a red square on grey, and a blue square; a box around each, one outside
    img = torch.full((2, 3, 64, 96), 0.5)
    img[0, :, 10:40, 20:50] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    img[1, :, 10:40, 20:50] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]
    boxes = torch.tensor([[18.0, 8, 52, 42], [18, 8, 52, 42], [60, 45, 90, 60]])
    looks = box_appearance(img, boxes, torch.tensor([0, 1, 0]))
    assert looks.shape == (3, 12)
    cells = looks.reshape(3, 3, 2, 2)  # box, channel, grid
    assert torch.allclose(cells[0], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 2, 2))
    assert torch.allclose(cells[1], torch.tensor([0.0, 0, 1])[:, None, None].expand(3, 2, 2))
    assert torch.allclose(cells[2], torch.full((3, 2, 2), 0.5))
    assert box_appearance(img, torch.zeros((0, 4)), torch.zeros(0)).shape == (0, 12)
    # the detector gives every box one, 0..1
    (d,) = detector.detect_jpegs([frames[0]])
    assert d.appearance is not None and d.appearance.shape == (len(d), 12)
    assert len(d) and d.appearance.min() >= 0 and d.appearance.max() <= 1


def test_mixed_frame_sizes_in_one_batch(detector: YoloDetector, frames: list[bytes]) -> None:
    small = _bgr(frames[0])
    big = cv2.resize(small, (1280, 720), interpolation=cv2.INTER_LINEAR)
    a, b = detector.detect_images([small, big])
    assert len(a) > 0 and abs(len(a) - len(b)) <= max(1, len(a) // 10)
    half = Detections(b.xyxy / 2, b.confidence, b.class_id)
    # the 2x frame is shrunk back to the same model input up to interpolation: same places
    assert _match(a, half, 0.7, 0.15, same_class=False) >= 0.8
    assert b.xyxy[:, 2].max() > 640  # in the big frame's own pixels


def test_from_settings_and_errors(tmp_path: Path) -> None:
    det = load_detector(VisionSettings(device="cpu", conf=0.5, batch_max=2))
    assert isinstance(det, YoloDetector) and det.conf == 0.5 and det.batch_max == 2
    with pytest.raises(ConfigError, match="CUDA"):
        YoloDetector(device="cpu", half=True)
    with pytest.raises(ConfigError, match="CUDA"):
        YoloDetector(device="cpu", gpu_decode=True)
    with pytest.raises(ConfigError, match="not found"):
        YoloDetector(tmp_path / "missing.pt", device="cpu")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot load"):
        YoloDetector(junk, device="cpu")


# --- any weights: a COCO-named model ------------------------------------------------------
def _coco_model(tmp_path: Path, bias: dict[int, float]) -> Path:
    """An untrained yolo11n with COCO's class names whose class scores are set by ``bias``."""
    prepare_ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", nc=9, verbose=False)
    model.names = dict(COCO_VEHICLES)
    head = model.model[-1]
    with torch.no_grad():
        for branch in head.cv3:
            conv = branch[-1]
            conv.bias.fill_(-8.0)
            for c, v in bias.items():
                conv.bias[c] = v
    path = tmp_path / "coco-like.pt"
    torch.save({"model": model, "train_args": {"imgsz": 640}}, path)
    return path


def test_coco_names_map_and_unknown_classes_drop(tmp_path: Path, frames: list[bytes]) -> None:
    # "train" (unknown to the project) wins everywhere: nothing is reported
    det = YoloDetector(_coco_model(tmp_path, {6: 2.0, 7: 1.0}), device="cpu", conf=0.5)
    assert det.imgsz == 640 and det.classes[3] is VehicleClass.truck
    (out,) = det.detect_jpegs(frames[:1])
    assert isinstance(out, Detections) and len(out) == 0
    # "truck" wins everywhere: every box is a truck, as ultralytics' predict says
    path = _coco_model(tmp_path, {6: 1.0, 7: 2.0})
    det = YoloDetector(path, device="cpu", conf=0.5, iou=0.5)
    (out,) = det.detect_jpegs(frames[:1])
    assert isinstance(out, Detections) and len(out) > 0
    assert {det.classes[c] for c in out.class_id} == {VehicleClass.truck}
    from ultralytics import YOLO  # type: ignore[attr-defined]

    (r,) = YOLO(str(path)).predict(
        _bgr(frames[0]), imgsz=640, conf=0.5, iou=0.5, device="cpu", verbose=False
    )
    assert r.boxes.cls.unique().tolist() == [7.0]
    # an untrained model scores every anchor alike, so NMS ties may fall either way: only the
    # number of boxes is compared here (agreement box by box: the shipped-model test above)
    assert abs(len(r.boxes) - len(out)) <= len(r.boxes) // 20


def test_nvjpeg_decode_path_runs_on_cpu(detector: YoloDetector, frames: list[bytes]) -> None:
    """The GPU decode path (torchvision.io.decode_jpeg on the detector's device) run with
    device=cpu: same pixels as the OpenCV path, same failures, same detections."""
    batch = [frames[0], b"", b"not a jpeg", frames[1], _huge(frames[2])]
    via_torch = detector._decode_gpu(batch)
    via_cv2 = detector.decode(batch)
    for i in (0, 3):
        a, b = via_torch[i], via_cv2[i]
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        assert a.shape == b.shape == (3, 360, 640) and a.dtype == torch.uint8
        assert (a.int() - b.int()).abs().float().mean() < 1.0
    for i in (1, 2, 4):
        assert isinstance(via_torch[i], DecodeFailure) and isinstance(via_cv2[i], DecodeFailure)
    ours = detector.detect_tensors([via_torch[0], via_torch[3]])  # type: ignore[list-item]
    ref = detector.detect_jpegs([frames[0], frames[1]])
    for o, r in zip(ours, ref, strict=True):
        assert isinstance(r, Detections)
        assert _match(o, r, 0.9, 0.05) >= 0.9
