"""``citystream vision train``: train the project's own detector on simulator frames.

No pretrained weights can be downloaded where CityStream runs, so the project ships a small
YOLO model it trains itself: a labelled dataset is generated from the intersection simulator
(:mod:`streams.vision.dataset`), ultralytics trains on it, and the weights are written with a
model card (data, settings, per-class mAP on held-out simulator runs, train time).

Training images are native-scale square crops of the frames (``--tile``), so a CPU can afford
many more steps; the model is evaluated, and runs, on whole frames at ``--imgsz``, which is
recorded in the checkpoint as the size to infer at.  A city swaps in standard or fine-tuned
YOLO weights with ``CITYSTREAM_VISION__WEIGHTS=/path/to/model.pt``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from citystream.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--frames", type=int, default=1200, help="simulator frames to generate (train + val)"
    )
    parser.add_argument("--scenes", type=int, default=8, help="simulator runs (seeds)")
    parser.add_argument(
        "--val-scenes", type=int, default=2, help="runs held out for validation (default 2)"
    )
    parser.add_argument(
        "--dataset",
        type=Path,
        help="use this already generated dataset directory instead of generating one",
    )
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (upper bound)")
    parser.add_argument(
        "--time-min",
        type=float,
        default=0.0,
        help="train for this many minutes (the schedule fits the budget; 0: by --epochs)",
    )
    parser.add_argument(
        "--imgsz", type=int, default=640, help="frame width and inference size (default 640)"
    )
    parser.add_argument(
        "--tile",
        type=int,
        default=320,
        help="train on native-scale square crops of this size (0: whole frames at --imgsz)",
    )
    parser.add_argument("--batch", type=int, default=32, help="training batch size")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the training")
    parser.add_argument(
        "--model",
        default="yolo11n.yaml",
        help="architecture yaml (from scratch) or a .pt checkpoint to fine-tune",
    )
    parser.add_argument("--name", default="citystream-sim-yolo11n", help="weights file name")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--workers", type=int, default=1, help="data loader processes")


def run(args: argparse.Namespace, settings: object = None) -> int:
    from streams.vision.yolo import prepare_ultralytics

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    prepare_ultralytics(out / "ultralytics")
    if args.frames < 10:
        raise ConfigError("--frames must be >= 10")
    if args.imgsz % 32 or args.tile % 32:
        raise ConfigError("--imgsz and --tile must be multiples of 32")
    device = _device(args.device)
    data_dir = args.dataset or out / "dataset"
    if args.dataset is None:
        from streams.vision.dataset import DatasetSpec, generate_dataset

        spec = DatasetSpec(
            frames=args.frames,
            scenes=args.scenes,
            val_scenes=args.val_scenes,
            width=args.imgsz,
            height=args.imgsz * 9 // 16,
            tile=args.tile,
            seed=args.seed,
        )
        t0 = time.monotonic()
        summary = generate_dataset(spec, data_dir)
        took = time.monotonic() - t0
        _log(f"dataset: {summary.images} images, {summary.boxes} boxes in {took:.0f}s")
    elif not (data_dir / "data.yaml").is_file():
        raise ConfigError(f"{data_dir} holds no data.yaml (generate one without --dataset)")
    result = train(
        data_dir,
        out,
        model=args.model,
        imgsz=args.imgsz,
        tile=args.tile,
        epochs=args.epochs,
        time_min=args.time_min,
        batch=args.batch,
        seed=args.seed,
        device=device,
        workers=args.workers,
    )
    weights = out / f"{args.name}.pt"
    finalize(result["last"], weights, imgsz=args.imgsz, info=result)
    metrics = evaluate(weights, data_dir, device=device)
    attach_metrics(weights, metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    write_model_card(out / "MODEL_CARD.md", weights, data_dir, result, metrics)
    _log(
        f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and {out / 'MODEL_CARD.md'}: "
        f"mAP50 {metrics['overall']['map50']:.3f}, mAP50-95 {metrics['overall']['map50_95']:.3f}"
    )
    return 0


def _log(msg: str) -> None:
    print(f"[vision train] {msg}", file=sys.stderr, flush=True)


def _device(device: str) -> str:
    from streams.vision.yolo import resolve_device

    return resolve_device(device)


def _ultra_device(device: str) -> str:
    return device.split(":")[1] if device.startswith("cuda:") else device


def train(
    data_dir: Path,
    out: Path,
    *,
    model: str,
    imgsz: int,
    tile: int,
    epochs: int,
    time_min: float,
    batch: int,
    seed: int,
    device: str,
    workers: int,
) -> dict[str, Any]:
    """Run ultralytics training; returns the settings used, the epochs run and the time."""
    from ultralytics import YOLO  # type: ignore[attr-defined]

    if model.endswith(".pt") and not Path(model).is_file():
        raise ConfigError(f"--model {model}: no such checkpoint (nothing is downloaded)")
    yolo = YOLO(model)
    settings: dict[str, Any] = {
        "data": str((data_dir / "data.yaml").resolve()),
        "imgsz": tile or imgsz,
        "epochs": epochs,
        "batch": batch,
        "workers": workers,
        "device": _ultra_device(device),
        "seed": seed,
        "deterministic": False,
        "plots": False,
        "amp": False,  # the AMP check downloads weights
        "val": False,  # validation runs once at the end, on whole frames
        "cache": "ram",
        "scale": 0.3,  # keep small motorbikes findable
        "close_mosaic": 1,
        # short CPU budgets: ultralytics' 3 warm-up epochs would eat most of the run
        "warmup_epochs": 0.5 if model.endswith(".pt") else 1.0,
        "patience": 1000,
        "project": str((out / "runs").resolve()),
        "name": "train",
        "exist_ok": True,
        "verbose": False,
    }
    if time_min > 0:
        settings["time"] = time_min / 60.0
    t0 = time.monotonic()
    yolo.train(**settings)
    seconds = time.monotonic() - t0
    trainer = yolo.trainer
    if trainer is None:
        raise RuntimeError("ultralytics did not run a trainer")
    last = Path(trainer.last)
    return {
        "model": model,
        "settings": {k: v for k, v in settings.items() if k not in ("project", "name", "data")},
        "epochs_run": int(trainer.epoch) + 1,
        "train_seconds": round(seconds, 1),
        "last": str(last),
        "device": device,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def finalize(src: str | Path, dst: Path, *, imgsz: int, info: dict[str, Any]) -> None:
    """Strip the optimizer and record the size to infer at (the frame width the crops were
    cut from) plus how the model was made, in the checkpoint."""
    import torch
    from ultralytics.utils.torch_utils import strip_optimizer

    strip_optimizer(str(src), str(dst))
    ckpt = torch.load(dst, map_location="cpu", weights_only=False)
    trained_at = ckpt["train_args"].get("imgsz")
    ckpt["train_args"]["imgsz"] = imgsz
    if hasattr(ckpt["model"], "args") and isinstance(ckpt["model"].args, dict):
        ckpt["model"].args["imgsz"] = imgsz
    ckpt["citystream"] = {
        "train_imgsz": trained_at,
        "infer_imgsz": imgsz,
        **{k: v for k, v in info.items() if k != "last"},
    }
    ckpt["date"] = info.get("finished", ckpt.get("date"))
    # ultralytics' own final validation ran on whole frames shrunk to the crop size: not this
    # model's accuracy (see attach_metrics)
    ckpt["train_metrics"] = None
    torch.save(ckpt, dst)


def attach_metrics(weights: Path, metrics: dict[str, Any]) -> None:
    """Record the held-out evaluation in the checkpoint (``ckpt["citystream"]["metrics"]``)."""
    import torch

    ckpt = torch.load(weights, map_location="cpu", weights_only=False)
    ckpt.setdefault("citystream", {})["metrics"] = metrics
    torch.save(ckpt, weights)


def evaluate(weights: Path, data_dir: Path, *, device: str) -> dict[str, Any]:
    """mAP on the held-out whole frames (ultralytics ``val``), and recall/precision of our
    own pipeline (:class:`YoloDetector` at its default thresholds) on the same frames."""
    import numpy as np
    from ultralytics import YOLO  # type: ignore[attr-defined]

    from streams.vision.dataset import read_labels
    from streams.vision.detector import DecodeFailure
    from streams.vision.yolo import YoloDetector

    yolo = YOLO(str(weights))
    imgsz = int(yolo.overrides.get("imgsz", 640))
    val = yolo.val(
        data=str((data_dir / "data.yaml").resolve()),
        split="val",
        imgsz=imgsz,
        batch=8,
        rect=True,
        device=_ultra_device(device),
        plots=False,
        verbose=False,
        workers=0,
        project=str((weights.parent / "runs").resolve()),
        name="val",
        exist_ok=True,
    )
    box = val.box
    names = yolo.names
    per_class: dict[str, dict[str, float]] = {}
    for k, c in enumerate(box.ap_class_index):
        p, r, ap50, ap = box.class_result(k)
        per_class[names[int(c)]] = {
            "precision": round(float(p), 4),
            "recall": round(float(r), 4),
            "map50": round(float(ap50), 4),
            "map50_95": round(float(ap), 4),
        }
    overall = {
        "precision": round(float(box.mp), 4),
        "recall": round(float(box.mr), 4),
        "map50": round(float(box.map50), 4),
        "map50_95": round(float(box.map), 4),
    }
    # our pipeline, at the thresholds a worker uses
    import cv2

    det = YoloDetector(weights, device=device)
    images = sorted((data_dir / "images" / "val").glob("*.jpg"))
    hits = {c: [0, 0, 0] for c in names.values()}  # tp, n_true, n_pred
    t_total = 0.0
    for path in images:
        jpeg = path.read_bytes()
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise RuntimeError(f"{path} does not decode")
        h, w = img.shape[:2]
        t0 = time.perf_counter()
        (d,) = det.detect_jpegs([jpeg])
        t_total += time.perf_counter() - t0
        if isinstance(d, DecodeFailure):
            raise RuntimeError(f"{path}: {d.reason}")
        truth = read_labels(data_dir / "labels" / "val" / f"{path.stem}.txt", w, h)
        pred_names = [det.classes[int(c)].value for c in d.class_id]
        pred_xyxy = d.xyxy
        used = np.zeros(len(pred_names), dtype=bool)
        for row in truth:
            cname = names[int(row[0])]
            hits[cname][1] += 1
            best, best_iou = -1, 0.5
            for j, pn in enumerate(pred_names):
                if used[j] or pn != cname:
                    continue
                iou = _iou(row[1:], pred_xyxy[j])
                if iou >= best_iou:
                    best, best_iou = j, iou
            if best >= 0:
                used[best] = True
                hits[cname][0] += 1
        for pn in pred_names:
            if pn in hits:
                hits[pn][2] += 1
    det.close()
    pipeline = {
        c: {
            "recall": round(tp / n, 4) if n else None,
            "precision": round(tp / npred, 4) if npred else None,
            "instances": n,
        }
        for c, (tp, n, npred) in hits.items()
    }
    return {
        "imgsz": imgsz,
        "val_images": len(images),
        "overall": overall,
        "per_class": per_class,
        "pipeline": {
            "conf": det.conf,
            "iou_match": 0.5,
            "per_class": pipeline,
            "cpu_ms_per_frame_batch1": round(t_total / max(len(images), 1) * 1000, 1),
            "device": device,
        },
    }


def _iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def write_model_card(
    path: Path,
    weights: Path,
    data_dir: Path,
    result: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    from streams.vision.dataset import median_box_size
    from streams.vision.yolo import weights_version

    ds = json.loads((data_dir / "dataset.json").read_text())
    spec = ds["spec"]
    sizes = median_box_size(data_dir, "val")
    s = result["settings"]
    lines = [
        f"# {weights.stem}",
        "",
        f"Version `{weights_version(weights)}`, {weights.stat().st_size / 1e6:.1f} MB, "
        f"trained {result['finished']} with `citystream vision train`.",
        "",
        "A YOLO detector the project trains itself on frames of its intersection simulator, "
        "because no pretrained weights can be downloaded where CityStream runs.  It knows "
        "only the simulator's flat-shaded vehicles: **it is not a model for real cameras**. "
        "A city sets `CITYSTREAM_VISION__WEIGHTS=/path/to/yolo.pt` (standard COCO or "
        "fine-tuned YOLO weights; COCO's motorcycle/car/bus/truck/bicycle/person map onto "
        "the project's classes).",
        "",
        "## Model",
        "",
        f"- Architecture: `{result['model']}` (ultralytics, from scratch unless a .pt is named)",
        f"- Classes: {', '.join(ds['classes'])}",
        f"- Inference size: {metrics['imgsz']} px (recorded in the checkpoint; settings "
        "`vision.imgsz = 0` uses it)",
        f"- Trained on {s['imgsz']} px native-scale crops of {spec['width']}x{spec['height']} "
        "frames" + (" (whole frames)" if not spec["tile"] else ""),
        "",
        "## Data",
        "",
        f"{spec['scenes']} simulator runs (SUMO, seed {spec['seed']}), one frame every "
        f"{spec['every_s']} s after {spec['warmup_s']} s warm-up; train/val split **by run** "
        f"({spec['scenes'] - spec['val_scenes']} / {spec['val_scenes']}).  "
        f"Frames: {ds['frames']}; training images (crops): {ds['images'].get('train')}.  "
        f"Labels skip boxes under {spec['min_box_px']} px a side, less than "
        f"{spec['min_inside']:.0%} inside the image, or less than {spec['min_visible']:.0%} "
        "visible behind nearer vehicles.",
        "",
        "| run | split | lighting | demand x | noise sigma | JPEG q | camera shift (m) | hfov |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sc in ds["scenes"]:
        lines.append(
            f"| {sc['index']} | {sc['split']} | {sc['lighting']} | {sc['demand_scale']} | "
            f"{sc['noise_sigma']} | {sc['jpeg_quality']} | {tuple(sc['camera_shift_m'])} | "
            f"{sc['hfov_deg']} |"
        )
    lines += [
        "",
        f"Boxes: train {ds['boxes'].get('train')}, val {ds['boxes'].get('val')}; "
        f"skipped {ds['skipped']}.  Median val box size (w x h px) {sizes}.",
        "",
        "## Training",
        "",
        f"- {result['epochs_run']} epochs in {result['train_seconds'] / 60:.1f} min on "
        f"`{result['device']}`; batch {s['batch']}, imgsz {s['imgsz']}, mosaic with "
        f"scale ±{s['scale']}, close_mosaic {s['close_mosaic']}, amp off, seed {s['seed']}"
        + (f", time budget {s['time'] * 60:.0f} min" if s.get("time") else ""),
        "",
        f"## Results on the held-out runs ({metrics['val_images']} whole frames, "
        f"imgsz {metrics['imgsz']})",
        "",
        "| class | mAP50 | mAP50-95 | P | R | pipeline recall @conf "
        f"{metrics['pipeline']['conf']} | pipeline precision | instances |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pipe = metrics["pipeline"]["per_class"]
    for name, m in metrics["per_class"].items():
        pm = pipe.get(name, {})
        lines.append(
            f"| {name} | {m['map50']:.3f} | {m['map50_95']:.3f} | {m['precision']:.3f} | "
            f"{m['recall']:.3f} | {pm.get('recall')} | {pm.get('precision')} | "
            f"{pm.get('instances')} |"
        )
    o = metrics["overall"]
    lines += [
        f"| **all** | **{o['map50']:.3f}** | **{o['map50_95']:.3f}** | {o['precision']:.3f} | "
        f"{o['recall']:.3f} | | | |",
        "",
        "mAP/P/R: ultralytics `val` (conf 0.001, NMS IoU 0.7).  Pipeline columns: "
        "`YoloDetector` at its default conf, a detection counts when IoU >= 0.5 with an "
        "unmatched true box of the same class.  Detect time on "
        f"`{metrics['pipeline']['device']}`: {metrics['pipeline']['cpu_ms_per_frame_batch1']} "
        "ms/frame (batch 1, decode included, shared machine).",
        "",
        "## Limitations",
        "",
        "- Synthetic frames only (flat-shaded boxes, one intersection, one camera pose family).",
        "- Far vehicles under ~5 px are not labelled and rarely found; heavily occluded "
        "vehicles neither.",
        "- Bus and truck are rare in the data (3 % and 5 % of traffic); their numbers rest on "
        "few instances.",
        "",
    ]
    path.write_text("\n".join(lines))
