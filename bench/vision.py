"""Vision throughput: frames/s through JPEG decode -> detect -> track, several cameras.

    python bench/vision.py [--frames 96] [--cameras 4] [--json bench/results/vision.json]

Frames are rendered by the intersection simulator and JPEG-encoded as the virtual camera
sends them; they are fed round-robin from ``--cameras`` cameras, and every result goes through
the per-camera ByteTrack tracker.  The baseline, measured in the same run, is the naive loop
a first version would write: per frame ``cv2.imdecode`` + ultralytics ``model.predict`` +
conversion + tracking.

On CPU the batched pipeline is swept over batch sizes.  With CUDA the sweep adds fp16 and GPU
JPEG decode (``torchvision.io.decode_jpeg`` on the device) against ``cv2.imdecode`` in a
thread pool; the aim there is >= 2,000 frames/s with the nano model and >= 15x the naive loop.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from citystream.table import format_table  # noqa: E402
from streams.vision.detections import Detections  # noqa: E402
from streams.vision.tracking import MultiCameraTracker  # noqa: E402


def render_frames(n: int, width: int, height: int, seed: int = 21) -> list[bytes]:
    """``n`` JPEG frames of a busy simulated intersection, one every 0.5 s after warm-up."""
    from simulators.intersection.calibration import build_calibration
    from simulators.intersection.camera import VirtualCamera
    from simulators.intersection.render import Renderer
    from simulators.intersection.sim import IntersectionSim, ScenarioConfig

    with tempfile.TemporaryDirectory() as d:
        cfg = ScenarioConfig(seed=seed, workdir=Path(d))
        cam = VirtualCamera(width=width, height=height)
        out: list[bytes] = []
        with IntersectionSim(cfg) as sim:
            renderer = Renderer(
                cam, str(sim.net_file), build_calibration(cfg, cam, str(sim.net_file))
            )
            for i, step in enumerate(sim.run(40 + n * 0.5 + 1)):
                if i >= 400 and i % 5 == 0 and len(out) < n:
                    out.append(renderer.encode(renderer.render(step)[0]))
    return out


def naive_loop(
    weights: Path, jpegs: list[bytes], cams: list[str], imgsz: int, conf: float, iou: float,
    device: str, half: bool,
) -> dict[str, Any]:  # fmt: skip
    """Per frame: cv2.imdecode, model.predict, convert, track."""
    import cv2
    import numpy as np
    from ultralytics import YOLO  # type: ignore[attr-defined]

    model = YOLO(str(weights))
    tracker = MultiCameraTracker()
    kw: dict[str, Any] = {"imgsz": imgsz, "conf": conf, "iou": iou, "device": device}
    if half:
        kw["quantize"] = 16
    for jpeg in jpegs[:3]:  # warm-up
        model.predict(
            cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), verbose=False, **kw
        )
    n_det = 0
    t0 = time.perf_counter()
    for cam, jpeg in zip(cams, jpegs, strict=True):
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        (r,) = model.predict(img, verbose=False, **kw)
        b: Any = r.boxes
        dets = Detections(b.xyxy.cpu().numpy(), b.conf.cpu().numpy(), b.cls.cpu().numpy())
        n_det += len(dets)
        tracker.update(cam, dets)
    dt = time.perf_counter() - t0
    return {"fps": len(jpegs) / dt, "ms_per_frame": dt / len(jpegs) * 1000, "detections": n_det}


def batched(
    weights: Path,
    jpegs: list[bytes],
    cams: list[str],
    *,
    device: str,
    batch: int,
    half: bool,
    gpu_decode: bool,
    threads: int,
    overlap: bool,
) -> dict[str, Any]:
    """Our pipeline: ``detect_jpegs`` on batches, then the tracker per frame.  With
    ``overlap`` the next batch is detected in a second thread while this one is tracked (torch
    releases the GIL in its kernels, so tracking hides behind the model)."""
    from streams.vision.yolo import YoloDetector

    det = YoloDetector(
        weights,
        device=device,
        half=half,
        gpu_decode=gpu_decode,
        batch_max=batch,
        decode_threads=threads,
    )
    tracker = MultiCameraTracker()
    det.detect_jpegs(jpegs[:batch])  # warm-up (allocations, cuDNN autotune)
    starts = list(range(0, len(jpegs), batch))
    n_det = 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="detect") as ex:
        pending = ex.submit(det.detect_jpegs, jpegs[:batch]) if overlap else None
        for k, s in enumerate(starts):
            if pending is not None:
                out = pending.result()
                if k + 1 < len(starts):
                    nxt = starts[k + 1]
                    pending = ex.submit(det.detect_jpegs, jpegs[nxt : nxt + batch])
            else:
                out = det.detect_jpegs(jpegs[s : s + batch])
            for cam, d in zip(cams[s : s + batch], out, strict=True):
                if isinstance(d, Detections):
                    n_det += len(d)
                    tracker.update(cam, d)
    dt = time.perf_counter() - t0
    # decode alone, for the breakdown
    t1 = time.perf_counter()
    for s in starts:
        det.decode(jpegs[s : s + batch])
    _sync(device)
    t_decode = time.perf_counter() - t1
    det.close()
    return {
        "device": device,
        "batch": batch,
        "half": half,
        "gpu_decode": gpu_decode,
        "overlap": overlap,
        "fps": len(jpegs) / dt,
        "ms_per_frame": dt / len(jpegs) * 1000,
        "decode_fps": len(jpegs) / t_decode,
        "detections": n_det,
    }


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _row(r: dict[str, Any], naive: dict[str, Any]) -> list[object]:
    return [
        "cuda" if r["device"].startswith("cuda") else "cpu",
        "batched" + (" + overlap" if r["overlap"] else ""),
        r["batch"],
        "fp16" if r["half"] else "fp32",
        "nvjpeg" if r["gpu_decode"] else "cv2 pool",
        r["fps"],
        r["ms_per_frame"],
        r["decode_fps"],
        r["fps"] / naive["fps"],
        r["detections"],
    ]


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped model")
    p.add_argument("--frames", type=int, default=96, help="frames rendered (CPU run)")
    p.add_argument("--gpu-frames", type=int, default=4096, help="frames fed per GPU config")
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--batches", default="1,4,8,16", help="CPU batch sizes")
    p.add_argument("--gpu-batches", default="16,64,128,256")
    p.add_argument("--threads", type=int, default=4, help="CPU JPEG decode threads")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "vision.json")
    a = p.parse_args()

    import torch
    import ultralytics

    from streams.vision.yolo import SHIPPED_WEIGHTS, YoloDetector, prepare_ultralytics

    prepare_ultralytics()
    weights = a.weights or SHIPPED_WEIGHTS
    probe = YoloDetector(weights, device="cpu")
    imgsz, conf, iou, version = probe.imgsz, probe.conf, probe.iou, probe.model_version
    probe.close()
    t = time.perf_counter()
    frames = render_frames(a.frames, a.width, a.height)
    kib = sum(map(len, frames)) / len(frames) / 1024
    print(
        f"rendered {len(frames)} frames {a.width}x{a.height} in {time.perf_counter() - t:.1f}s "
        f"(mean JPEG {kib:.0f} KiB); model {version}, imgsz {imgsz}",
        file=sys.stderr,
    )
    cams = [f"cam-{i % a.cameras}" for i in range(len(frames))]
    result: dict[str, Any] = {
        "weights": version,
        "frame_size": [a.width, a.height],
        "imgsz": imgsz,
        "cameras": a.cameras,
        "torch": torch.__version__,
        "ultralytics": ultralytics.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "runs": [],
    }
    headers = ["device", "pipeline", "batch", "precision", "decode", "frames/s", "ms/frame"]
    headers += ["decode frames/s", "x naive", "detections"]
    rows: list[list[object]] = []

    def naive_row(dev: str, n: dict[str, Any], prec: str) -> list[object]:
        return [dev, "naive predict loop", 1, prec, "cv2", n["fps"], n["ms_per_frame"], "-"]

    # --- CPU -------------------------------------------------------------------------------
    naive = naive_loop(weights, frames, cams, imgsz, conf, iou, "cpu", False)
    result["naive_cpu"] = naive
    rows.append([*naive_row("cpu", naive, "fp32"), 1.0, naive["detections"]])
    cpu_batches = [int(x) for x in a.batches.split(",")]
    common = {"half": False, "gpu_decode": False, "threads": a.threads, "device": "cpu"}
    for b in cpu_batches:
        r = batched(weights, frames, cams, batch=b, overlap=False, **common)  # type: ignore[arg-type]
        result["runs"].append(r)
        rows.append(_row(r, naive))
    best = max(result["runs"], key=lambda r: r["fps"])
    r = batched(weights, frames, cams, batch=best["batch"], overlap=True, **common)  # type: ignore[arg-type]
    result["runs"].append(r)
    rows.append(_row(r, naive))
    for r in result["runs"]:
        r["speedup_vs_naive"] = r["fps"] / naive["fps"]
    result["best_cpu"] = max(result["runs"], key=lambda r: r["fps"])

    # --- GPU -------------------------------------------------------------------------------
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
        reps = -(-a.gpu_frames // len(frames))
        gframes = (frames * reps)[: a.gpu_frames]
        gcams = [f"cam-{i % a.cameras}" for i in range(len(gframes))]
        gnaive = naive_loop(weights, gframes[:512], gcams[:512], imgsz, conf, iou, "cuda:0", True)
        result["naive_cuda"] = gnaive
        rows.append([*naive_row("cuda", gnaive, "fp16"), 1.0, gnaive["detections"]])
        gpu_runs = []
        for b, half, gdec in itertools.product(
            [int(x) for x in a.gpu_batches.split(",")], (False, True), (False, True)
        ):
            gpu_runs.append(
                batched(
                    weights,
                    gframes,
                    gcams,
                    device="cuda:0",
                    batch=b,
                    half=half,
                    gpu_decode=gdec,
                    threads=a.threads,
                    overlap=True,
                )
            )
        top = max(gpu_runs, key=lambda r: r["fps"])
        gpu_runs.append(
            batched(
                weights,
                gframes,
                gcams,
                device="cuda:0",
                batch=top["batch"],
                half=top["half"],
                gpu_decode=top["gpu_decode"],
                threads=a.threads,
                overlap=False,
            )
        )
        for r in gpu_runs:
            r["speedup_vs_naive"] = r["fps"] / gnaive["fps"]
            rows.append(_row(r, gnaive))
        result["runs"] += gpu_runs
        result["best_cuda"] = top
        result["aim_cuda"] = {
            "fps_at_least_2000": top["fps"] >= 2000,
            "speedup_at_least_15x": top["speedup_vs_naive"] >= 15,
        }

    print(format_table(headers, rows))
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {a.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
