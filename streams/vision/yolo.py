"""The ultralytics YOLO detector backend: any ``.pt`` weights, batched, on CUDA or CPU.

One pipeline of torch operations per batch, the same on every device:

1. JPEG decode: ``torchvision.io.decode_jpeg`` on the GPU (``gpu_decode``), else
   ``cv2.imdecode`` in a thread pool.  A frame that does not decode becomes a
   :class:`~streams.vision.detector.DecodeFailure` in its slot; the rest of the batch goes on.
2. Letterbox on the device, per group of same-sized frames: one bilinear resize of the whole
   group, padding with grey (114) to a multiple of the model stride (ultralytics' "rect"
   letterbox, the one ``model.predict`` uses).
3. Forward pass, fp16 on CUDA.
4. Vectorised NMS over the whole batch: best class per anchor, confidence filter, one
   ``torchvision.ops.nms`` call with boxes offset by (frame, class), at most ``max_det`` per
   frame.
5. Appearance: the mean colour of a 2 x 2 grid over each kept box's inner part
   (:func:`box_appearance`, one ``torchvision.ops.roi_align`` call over the letterboxed
   batch), 12 numbers per box that the tracker uses to tell neighbours apart.
6. Boxes scaled back to the original pixels, copied to the host once, and turned into one
   :class:`~streams.vision.detections.Detections` per frame.

Class mapping: the model's class names map to :class:`VehicleClass` (COCO's ``motorcycle``,
``bicycle``, ``car``, ``bus``, ``truck``, ``person`` too); classes the project does not know are
dropped after the best class is chosen, exactly as ``predict(classes=...)`` would.

torch, torchvision, cv2 and ultralytics are imported lazily (the ``vision`` extra).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from citystream.errors import ConfigError
from schemas.messages import VehicleClass
from streams.vision.detections import Detections
from streams.vision.detector import DecodeFailure

if TYPE_CHECKING:
    import torch

    from citystream.settings import VisionSettings

MODELS_DIR = Path(__file__).parent / "models"
#: The model this project trains on simulator frames (``citystream vision train``).
SHIPPED_WEIGHTS = MODELS_DIR / "citystream-sim-yolo11n.pt"
#: Class names of common datasets (COCO, ours) -> the project's vehicle classes.
CLASS_ALIASES: Mapping[str, VehicleClass] = {
    "motorbike": VehicleClass.motorbike,
    "motorcycle": VehicleClass.motorbike,
    "scooter": VehicleClass.motorbike,
    "car": VehicleClass.car,
    "bus": VehicleClass.bus,
    "truck": VehicleClass.truck,
    "bicycle": VehicleClass.bicycle,
    "bike": VehicleClass.bicycle,
    "person": VehicleClass.person,
    "pedestrian": VehicleClass.person,
}
_PAD_VALUE = 114.0
_KEY_OFFSET = 8192.0  # > any coordinate of the model input (imgsz <= 4096)
#: Frames above this many pixels are refused before decoding (a 2 GB image is not a camera).
MAX_PIXELS = 8192 * 8192
_INSTALL_HINT = "the YOLO detector needs the vision extra: pip install 'citystream[vision]'"
#: the share of a box's width and height its appearance is taken from (the vehicle, not the
#: road around its corners)
APPEARANCE_INNER = 0.6


def box_appearance(images: torch.Tensor, boxes: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
    """``(K, 12)``: per box, the mean colour (0..1) of the 4 cells of a 2 x 2 grid over its
    inner part (:data:`APPEARANCE_INNER`), from ``images`` ``(B, 3, H, W)`` scaled 0..1,
    ``boxes`` ``(K, 4)`` xyxy in their pixels and ``frame`` ``(K,)`` the image of each box."""
    import torch
    from torchvision.ops import roi_align

    if len(boxes) == 0:
        return torch.zeros((0, 12), device=images.device)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (APPEARANCE_INNER / 2)
    rois = torch.cat([frame[:, None].to(boxes.dtype), centre - half, centre + half], 1)
    cells = roi_align(
        images.float(),
        rois.float(),
        output_size=2,
        spatial_scale=1.0,
        sampling_ratio=2,
        aligned=True,
    )
    out: torch.Tensor = cells.flatten(1)
    return out


def prepare_ultralytics(config_dir: Path | None = None) -> None:
    """Keep ultralytics offline and its settings file out of the user's home.

    Must run before ultralytics is first imported; later calls change nothing.
    """
    default = Path.home() / ".cache" / "citystream" / "ultralytics"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir or default))
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_VERBOSE", "False")


def class_mapping(names: Mapping[int, str] | Sequence[str]) -> tuple[list[VehicleClass], list[int]]:
    """The project classes a model can report, and for each model class id its index in
    them (``-1``: a class the project does not know, dropped).

    The project classes come in :class:`VehicleClass` order, whatever the model's order.
    """
    items = dict(enumerate(names)) if not isinstance(names, Mapping) else dict(names)
    mapped = {i: CLASS_ALIASES.get(str(n).strip().lower()) for i, n in items.items()}
    present = [c for c in VehicleClass if c in mapped.values()]
    n = max(items) + 1 if items else 0
    lookup = [-1] * n
    for i, vc in mapped.items():
        if vc is not None:
            lookup[i] = present.index(vc)
    return present, lookup


def jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, without decoding; None if not found."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # no length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (
            *range(0xC0, 0xC4),
            *range(0xC5, 0xC8),
            *range(0xC9, 0xCC),
            *range(0xCD, 0xD0),
        ):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        if length < 2:
            return None
        i += 2 + length
    return None


def weights_version(path: Path) -> str:
    """``<file stem>@<first 12 hex of the file's SHA-256>``."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"{path.stem}@{h.hexdigest()[:12]}"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"vision device {device!r} requested but CUDA is not available")
    return "cuda:0" if device == "cuda" else device


@dataclass(frozen=True)
class Letterbox:
    """How one group of same-sized frames was resized and padded."""

    height: int
    width: int
    new_height: int
    new_width: int
    top: int
    bottom: int
    left: int
    right: int
    gain: float

    @classmethod
    def plan(cls, height: int, width: int, imgsz: int, stride: int) -> Letterbox:
        """The ultralytics ``LetterBox(auto=True)`` geometry for a frame size."""
        r = min(imgsz / height, imgsz / width)
        nw, nh = max(round(width * r), 1), max(round(height * r), 1)
        dw, dh = (imgsz - nw) % stride / 2, (imgsz - nh) % stride / 2
        return cls(
            height,
            width,
            nh,
            nw,
            round(dh - 0.1),
            round(dh + 0.1),
            round(dw - 0.1),
            round(dw + 0.1),
            r,
        )


class YoloDetector:
    """An ultralytics YOLO model behind the :class:`~streams.vision.detector.Detector` contract."""

    def __init__(
        self,
        weights: Path | None = None,
        *,
        device: str = "auto",
        half: bool | None = None,
        imgsz: int = 0,
        conf: float = 0.25,
        iou: float = 0.5,
        max_det: int = 300,
        batch_max: int = 32,
        decode_threads: int = 4,
        gpu_decode: bool | None = None,
    ) -> None:
        prepare_ultralytics()
        try:
            import torch
            from ultralytics.nn.tasks import load_checkpoint
        except ImportError as e:  # pragma: no cover - depends on the installed extras
            raise ConfigError(_INSTALL_HINT) from e

        path = Path(weights) if weights is not None else SHIPPED_WEIGHTS
        if not path.is_file():
            raise ConfigError(f"YOLO weights {path} not found (vision.weights)")
        if not (0 < conf < 1 and 0 < iou < 1):
            raise ConfigError(f"conf and iou must lie in (0, 1), got conf={conf}, iou={iou}")
        self.device = resolve_device(device)
        cuda = self.device.startswith("cuda")
        self.half = cuda if half is None else half
        if self.half and not cuda:
            raise ConfigError("half precision (vision.half) needs a CUDA device")
        self.gpu_decode = cuda if gpu_decode is None else gpu_decode
        if self.gpu_decode and not cuda:
            raise ConfigError("GPU JPEG decode (vision.gpu_decode) needs a CUDA device")
        try:
            model, ckpt = load_checkpoint(path, device=self.device, fuse=True)  # type: ignore[no-untyped-call]
        except Exception as e:
            raise ConfigError(f"cannot load YOLO weights {path}: {e}") from e
        if getattr(model, "task", "detect") != "detect":
            raise ConfigError(f"{path} is a {model.task!r} model, not a detection model")
        self._model = model.half() if self.half else model.float()
        # NHWC: oneDNN convolutions on x86 CPUs (as ultralytics' predict does), tensor-core
        # kernels for fp16 on CUDA
        mkldnn = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        nhwc = self.half or (not cuda and mkldnn)
        self._memory_format = torch.channels_last if nhwc else torch.contiguous_format
        self._model = self._model.to(memory_format=self._memory_format)
        self._torch_device = torch.device(self.device)
        self._dtype = torch.float16 if self.half else torch.float32
        self.stride = int(max(int(model.stride.max()), 32))
        names: Mapping[int, str] = model.names
        self.model_names = dict(names)
        classes, lookup = class_mapping(names)
        if not classes:
            raise ConfigError(
                f"{path}: none of its classes {sorted(set(names.values()))} is a vehicle "
                f"class the project knows ({', '.join(CLASS_ALIASES)})"
            )
        self.classes: Sequence[VehicleClass] = tuple(classes)
        self._lookup = torch.tensor(lookup, dtype=torch.long, device=self._torch_device)
        self.imgsz = imgsz or _trained_imgsz(ckpt.get("train_args") or {})
        if self.imgsz % self.stride:
            self.imgsz = (self.imgsz // self.stride + 1) * self.stride
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.batch_max = batch_max
        self.end2end = bool(getattr(model, "end2end", False))
        self.weights = path
        self.model_version = weights_version(path)
        self._pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="jpeg")
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: VisionSettings) -> YoloDetector:
        return cls(
            settings.weights,
            device=settings.device,
            half=settings.half,
            imgsz=settings.imgsz,
            conf=settings.conf,
            iou=settings.iou,
            batch_max=settings.batch_max,
            decode_threads=settings.decode_threads,
            gpu_decode=settings.gpu_decode,
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> YoloDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the contract --------------------------------------------------------------------
    def detect_jpegs(self, jpegs: Sequence[bytes]) -> list[Detections | DecodeFailure]:
        """Decode, detect and convert a batch; one result per input frame, in order."""
        frames = self.decode(jpegs)
        ok = [i for i, f in enumerate(frames) if not isinstance(f, DecodeFailure)]
        out: list[Detections | DecodeFailure] = [
            f if isinstance(f, DecodeFailure) else Detections.empty() for f in frames
        ]
        tensors = [frames[i] for i in ok]
        for i, det in zip(ok, self.detect_tensors(tensors), strict=True):  # type: ignore[arg-type]
            out[i] = det
        return out

    def detect_images(self, images: Sequence[np.ndarray]) -> list[Detections]:
        """Detect in decoded BGR ``(H, W, 3)`` uint8 frames (as OpenCV reads them)."""
        import torch

        tensors = [
            torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1)))
            for im in images
        ]
        return self.detect_tensors(tensors)

    # --- stages ----------------------------------------------------------------------------
    def decode(self, jpegs: Sequence[bytes]) -> list[torch.Tensor | DecodeFailure]:
        """JPEG bytes -> RGB ``(3, H, W)`` uint8 tensors (on the GPU with ``gpu_decode``, else
        on the host), or a failure each."""
        if self.gpu_decode:
            return self._decode_gpu(jpegs)
        return list(self._pool.map(self._decode_cpu, jpegs))

    def _decode_cpu(self, data: bytes) -> torch.Tensor | DecodeFailure:
        import cv2
        import torch

        if not data:
            return DecodeFailure("empty frame")
        if (failure := _check_header(data)) is not None:
            return failure
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None or img.ndim != 3 or img.shape[2] != 3:
            return DecodeFailure("not a decodable JPEG image")
        # stays on the host: a whole group is stacked and moved to the device in one copy
        return torch.from_numpy(np.ascontiguousarray(img[..., ::-1].transpose(2, 0, 1)))

    def _decode_gpu(self, jpegs: Sequence[bytes]) -> list[torch.Tensor | DecodeFailure]:
        import warnings

        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        out: list[torch.Tensor | DecodeFailure] = [DecodeFailure("empty frame")] * len(jpegs)
        idx = []
        for i, d in enumerate(jpegs):
            failure = _check_header(d) if d else None
            if failure is not None:
                out[i] = failure
            elif d:
                idx.append(i)
        if not idx:
            return out
        datas = [torch.frombuffer(bytearray(jpegs[i]), dtype=torch.uint8) for i in idx]
        rgb, dev = ImageReadMode.RGB, self._torch_device
        # torchvision 0.29 warns that image decoding moves to TorchCodec; it works the same
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:  # one batched call (nvJPEG on CUDA)
                for i, im in zip(idx, decode_jpeg(datas, mode=rgb, device=dev), strict=True):
                    out[i] = im
            except RuntimeError:  # a bad frame fails the call: find it, keep the others
                for i, data in zip(idx, datas, strict=True):
                    try:
                        out[i] = decode_jpeg(data, mode=rgb, device=dev)
                    except RuntimeError as e:
                        out[i] = DecodeFailure(f"not a decodable JPEG image: {e}")
        return out

    def detect_tensors(self, frames: Sequence[torch.Tensor]) -> list[Detections]:
        """Detect in RGB ``(3, H, W)`` uint8 tensors (host or device); one result per frame."""
        import torch

        results: list[Detections | None] = [None] * len(frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault((int(f.shape[1]), int(f.shape[2])), []).append(i)
        with self._lock, torch.inference_mode():
            for (h, w), members in groups.items():
                box = Letterbox.plan(h, w, self.imgsz, self.stride)
                for s in range(0, len(members), self.batch_max):
                    chunk = members[s : s + self.batch_max]
                    batch = torch.stack([frames[i] for i in chunk]).to(
                        self._torch_device, non_blocking=True
                    )
                    dets = self._infer(batch, box)
                    for i, d in zip(chunk, dets, strict=True):
                        results[i] = d
        return [r if r is not None else Detections.empty() for r in results]

    def letterbox(self, batch: torch.Tensor, box: Letterbox) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 -> the model input: resized, padded, scaled to 0..1."""
        import torch.nn.functional as F

        x = batch.to(self._dtype)
        if (box.new_height, box.new_width) != (box.height, box.width):
            x = F.interpolate(
                x, size=(box.new_height, box.new_width), mode="bilinear", align_corners=False
            )
        x = F.pad(x, (box.left, box.right, box.top, box.bottom), value=_PAD_VALUE)
        return x / 255.0

    def _infer(self, batch: torch.Tensor, box: Letterbox) -> list[Detections]:
        boxed = self.letterbox(batch, box)
        x = boxed.contiguous(memory_format=self._memory_format)
        pred = self._model(x)
        if isinstance(pred, list | tuple):
            pred = pred[0]
        keep_boxes, keep_scores, keep_cls, frame, counts = self._nms(pred.float())
        # from the contiguous input: roi_align on a channels-last tensor is 60 times slower
        keep_looks = box_appearance(boxed, keep_boxes, frame)
        # back to the original frame's pixels
        keep_boxes[:, [0, 2]] = ((keep_boxes[:, [0, 2]] - box.left) / box.gain).clamp(0, box.width)
        keep_boxes[:, [1, 3]] = ((keep_boxes[:, [1, 3]] - box.top) / box.gain).clamp(0, box.height)
        xyxy, scores, cls, looks = self._to_host(keep_boxes, keep_scores, keep_cls, keep_looks)
        out = []
        start = 0
        for n in counts:
            sl = slice(start, start + n)
            out.append(Detections(xyxy[sl], scores[sl], cls[sl], appearance=looks[sl]))
            start += n
        return out

    @staticmethod
    def _to_host(
        boxes: torch.Tensor, scores: torch.Tensor, cls: torch.Tensor, looks: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One copy to the host of boxes, scores, classes and appearance descriptors."""
        import torch

        packed = torch.cat(
            [boxes, scores[:, None], cls[:, None].to(boxes.dtype), looks.to(boxes.dtype)], 1
        )
        a = packed.double().cpu().numpy()
        return a[:, :4], a[:, 4], a[:, 5].astype(np.int64), a[:, 6:]

    def _nms(
        self, pred: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
        """Batched NMS of raw predictions: boxes, scores, classes and frame index of the kept
        rows, sorted by frame, then by score, and the count per frame."""
        import torch
        import torchvision

        bs = pred.shape[0]
        if self.end2end or pred.shape[-1] == 6:  # (B, N, 6): x1 y1 x2 y2 conf cls, no NMS
            frame = torch.arange(bs, device=pred.device)[:, None].expand(bs, pred.shape[1])
            boxes, scores, model_cls = pred[..., :4], pred[..., 4], pred[..., 5].long()
            mask = scores > self.conf
            boxes, scores, model_cls, frame = (
                boxes[mask],
                scores[mask],
                model_cls[mask],
                frame[mask],
            )
            cls = self._lookup[model_cls]
            known = cls >= 0
            boxes, scores, cls, frame = boxes[known], scores[known], cls[known], frame[known]
            order = torch.argsort(frame * 2.0 - scores, stable=True)
        else:  # (B, 4 + nc, A): xywh + class scores
            nc = len(self.model_names)
            p = pred.transpose(1, 2)  # (B, A, 4 + nc)
            scores_all, model_cls = p[..., 4 : 4 + nc].max(-1)
            mask = scores_all > self.conf
            frame = torch.nonzero(mask)[:, 0]
            xywh = p[..., :4][mask]
            scores, model_cls = scores_all[mask], model_cls[mask]
            cls = self._lookup[model_cls]
            known = cls >= 0
            xywh, scores, model_cls, cls, frame = (
                xywh[known],
                scores[known],
                model_cls[known],
                cls[known],
                frame[known],
            )
            boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
            # one NMS call for the whole batch, within (frame, class): boxes of different keys
            # are moved apart; in float64, so the offsets of a large batch cost no precision
            key = (frame * (nc + 1) + model_cls).to(torch.float64)
            shifted = boxes.to(torch.float64) + (key * _KEY_OFFSET)[:, None]
            keep = torchvision.ops.nms(shifted, scores.to(torch.float64), self.iou)
            # keep is sorted by score; a stable sort by frame keeps that order within a frame
            keep = keep[torch.argsort(frame[keep], stable=True)]
            boxes, scores, cls, frame = boxes[keep], scores[keep], cls[keep], frame[keep]
            order = torch.arange(len(frame), device=pred.device)
        boxes, scores, cls, frame = boxes[order], scores[order], cls[order], frame[order]
        counts = torch.bincount(frame, minlength=bs)
        if len(frame) and int(counts.max()) > self.max_det:
            first = torch.cumsum(counts, 0) - counts
            rank = torch.arange(len(frame), device=pred.device) - first[frame]
            sel = rank < self.max_det
            boxes, scores, cls, frame = boxes[sel], scores[sel], cls[sel], frame[sel]
            counts = torch.bincount(frame, minlength=bs)
        return boxes.clone(), scores, cls, frame, [int(c) for c in counts.cpu().tolist()]


def _check_header(data: bytes) -> DecodeFailure | None:
    size = jpeg_dimensions(data)
    if size is None:
        return DecodeFailure("not a JPEG image (no frame header)")
    w, h = size
    if w == 0 or h == 0 or w * h > MAX_PIXELS:
        return DecodeFailure(f"JPEG frame of {w}x{h} pixels refused (at most {MAX_PIXELS})")
    return None


def _trained_imgsz(train_args: Mapping[str, Any]) -> int:
    """The inference size a checkpoint was made for: ``citystream_imgsz`` (our models are
    trained on native-scale crops of frames of that width), else the training ``imgsz``."""
    size = train_args.get("citystream_imgsz") or train_args.get("imgsz") or 640
    if isinstance(size, list | tuple):
        size = max(size)
    return int(size)
