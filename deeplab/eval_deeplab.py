"""EVAL_DEEPLAB: segment every image of ``eval.split`` at its own size and score it.

Images of equal size are batched (each padded only to its own multiple of the output stride,
cut off before scoring), in batches fixed over the whole split and shared between torchrun's
processes, so a prediction never depends on the number of processes or on its neighbours.
Optional multi-scale + flip averaging and the original's CRF post-processing. Writes predictions
(VOC palette PNGs, ``Layout.prediction``) and side-by-side overlays (image | ground truth |
prediction, ``Layout.overlay``); where masks exist, the confusion matrix, mIoU, per-class IoU and
pixel accuracy go to tensorboard and to runs/eval_deeplab/report.{json,md}. A folder of new
photos gets predictions only. Predictions made by the same checkpoint with the same settings are
reused on a rerun (runs/eval_deeplab/predictions.json, and predictions.rank<N>.json of an interrupted
run, record which) unless runtime.overwrite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from concurrent import futures

import numpy as np
import torch
from tqdm import tqdm

import datasets
from common import board, distributed, files, metrics, pool, runtime, work
from common.errors import InputError
from common.layout import Layout
from common.stages import BY_NAME
from deeplab.inference import batch_probabilities, crf_refine
from deeplab.models import build_deeplab

STAGE = "eval_deeplab"
TENSORBOARD_PICTURES = 8


def checkpoint_path(cfg):
    """checkpoints/deeplab/<eval.checkpoint>.pt (last or best), else the other one;
    FileNotFoundError naming the folder if neither."""
    layout = Layout(cfg)
    path = layout.handed_on(BY_NAME["train_deeplab"], cfg)
    if path is not None:
        return path
    raise FileNotFoundError(
        f"no trained DeepLab in {layout.checkpoint('deeplab').parent} (best.pt or "
        f"last.pt): run TRAIN_DEEPLAB first (python main.py --stages train_deeplab)"
    )


def preflight(cfg, stages: list[str]) -> None:
    """Refuse to start a pipeline that evaluates a DeepLab nobody trains or trained."""
    if "train_deeplab" not in stages:
        checkpoint_path(cfg)


def load_trained(cfg, device) -> tuple[torch.nn.Module, dict, str]:
    """The trained DeepLab (eval mode), its checkpoint's description, and the file's SHA-1."""
    path = checkpoint_path(cfg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or not a torch file
        raise OSError(f"cannot read DeepLab checkpoint {path}: {err}") from err
    extra = state["extra"]
    model = build_deeplab(
        backbone=extra["backbone"],
        num_classes=extra["num_classes"],
        output_stride=extra["output_stride"],
        pretrained_backbone=False,
    )
    model.load_state_dict(state["model"])
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    model = runtime.to_memory_format(model.to(device), cfg.runtime.memory_format)
    return model.eval(), {**extra, "checkpoint": str(path), "step": state.get("step")}, digest


def confusion_figure(matrix: metrics.ConfusionMatrix, names: list[str]):
    """Row-normalised confusion matrix (each ground-truth class sums to 1) as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.matrix.astype(np.float64)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = 1.5 + 0.5 * len(names)
    figure, axis = plt.subplots(figsize=(side, side))
    axis.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for (row, col), value in np.ndenumerate(rows):
        if value >= 0.005:
            axis.text(
                col,
                row,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.5 else "black",
            )
    axis.set_xticks(range(len(names)), names, rotation=90)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("ground truth (row-normalised)")
    figure.tight_layout()
    return figure


def markdown_report(result: dict) -> str:
    """The report as markdown: the supervision flag first, then the scores and per-class IoU."""
    lines = [
        f"# DeepLab evaluation on {result['split']} ({result['images_scored']} of "
        f"{result['images']} images with masks)",
        "",
    ]
    if not result["weakly_supervised"]:
        lines += ["**NOT weakly supervised:** " + "; ".join(result["not_weakly_supervised_because"]), ""]
    lines += [
        f"- mIoU: {result['mIoU']:.4f}",
        f"- pixel accuracy: {result['pixel_accuracy']:.4f}",
        f"- checkpoint: {result['checkpoint']} (step {result['step']}, backbone {result['backbone']})",
        f"- gt_percentage: {result['gt_percentage']}",
        f"- scales {result['settings']['scales']}, flip {result['settings']['flip']}, CRF {result['settings']['crf']}",
        "",
        "| class | IoU | precision | recall |",
        "|---|---|---|---|",
    ]
    for name in result["per_class_IoU"]:
        cells = [result[key][name] for key in ("per_class_IoU", "per_class_precision", "per_class_recall")]
        lines.append(
            f"| {name} | " + " | ".join("-" if v is None or not math.isfinite(v) else f"{v:.4f}" for v in cells) + " |"
        )
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:
    """Evaluate the trained DeepLab on ``eval.split``; returns {"mIoU", "pixel_accuracy",
    "per_class_IoU", "images", "weakly_supervised"} (scores only where masks exist).

    Under torchrun each process predicts and scores its share of fixed, equal-size batches (so
    every prediction is the same bytes whatever the number of processes); rank 0 sums the
    confusion matrices and alone writes the report and tensorboard. Every rank returns the same
    summary."""
    settings = cfg.eval
    device = distributed.device_for_rank(runtime.select_device(cfg.runtime.device))
    layout = Layout(cfg)
    run_dir = layout.run_dir(STAGE)
    work.begin_stage(device, [layout.folder("deeplab"), run_dir])
    model, extra, digest = load_trained(cfg, device)
    weakly = extra.get("weakly_supervised", not extra.get("segmentation_pretrained", False))
    reasons = extra.get("not_weakly_supervised_because", [])
    if not weakly and distributed.is_main():
        print("WARNING: this DeepLab is NOT weakly supervised: " + "; ".join(reasons), flush=True)
    image_set = datasets.build(cfg, settings.split)
    if image_set.num_classes + 1 != extra["num_classes"]:
        raise InputError(
            f"{extra['checkpoint']} predicts {extra['num_classes'] - 1} classes, the "
            f"{settings.split} split of {cfg.path(cfg.dataset.root)} has {image_set.num_classes}"
        )
    num_classes = extra["num_classes"]
    # keys as recorded before the switch was named eval.use_crf: earlier predictions stay reusable
    method = {
        "checkpoint_sha1": digest,
        "scales": list(settings.scales),
        "flip": settings.flip,
        "crf": settings.use_crf,
        "crf_unary": settings.crf_unary,
        "crf_confidence": settings.crf_confidence,
        "crf_params": dataclasses.asdict(settings.crf) if settings.use_crf else None,
        "precision": cfg.runtime.precision,
    }
    reusable = _reusable_predictions(run_dir, method, cfg.runtime.overwrite)
    distributed.barrier()  # every rank has read the manifests before any rewrites its own

    def done(image_id: str) -> bool:
        return image_id in reusable and layout.prediction(image_id).exists()

    # equal-size batches: an image is padded only to its own multiple of the output stride, never
    # to a neighbour's size, and the batches are cut from every id, not from those still to do
    batches = work.fixed_batches(image_set.ids, settings.batch_size, group=image_set.image_size)
    my_ids = [i for batch in work.shard(batches) for i in batch]
    todo_batches = work.my_batches(batches, done, False)
    todo = set(i for batch in todo_batches for i in batch if not done(i))
    reused = [i for i in my_ids if i not in todo]
    if reused:
        print(
            f"{len(reused)} predictions by this checkpoint and settings are already in "
            f"{layout.prediction('x').parent}; reused (runtime.overwrite recomputes)"
        )

    matrix = metrics.ConfusionMatrix(num_classes)
    overlay_ids = set(image_set.ids if settings.overlays < 0 else image_set.ids[: settings.overlays])
    scored = 0
    progress = tqdm(total=len(my_ids), desc=f"eval {settings.split}", unit="img")

    def finish(image_id: str, image: np.ndarray | None, prediction: np.ndarray) -> None:
        nonlocal scored
        mask = image_set.mask(image_id)
        if mask is not None:
            matrix.update(mask, prediction)
            scored += 1
        if image_id in overlay_ids and (image is not None or not layout.overlay(image_id).exists()):
            image = image_set.image(image_id) if image is None else image
            truth = files.colorize(mask) if mask is not None else np.full_like(image, 255)
            picture = np.concatenate([image, truth, files.colorize(prediction)], axis=1)
            files.write_rgb(layout.overlay(image_id), picture)
        progress.update(1)

    for image_id in reused:
        finish(image_id, None, files.read_label_png(layout.prediction(image_id)))
    progress_path = run_dir / f"predictions.rank{distributed.rank()}.json"
    finished = set(reusable)

    def record(group: list[str]) -> None:
        # recorded as we go (one file per process), so an interrupted evaluation keeps what it finished
        finished.update(group)
        files.write_text(progress_path, json.dumps({"method": method, "ids": sorted(finished)}, indent=1))

    # the dense CRF is single-threaded and most of an evaluation's time on a CPU: a pool of
    # runtime.num_workers processes refines one batch while this process segments the next
    crf_workers = cfg.runtime.num_workers if settings.use_crf and todo else 0
    crf_pool = pool.executor(crf_workers) if crf_workers > 0 else None
    in_flight: dict = {}  # future -> (image id, image)
    group_of: dict[str, int] = {}
    outstanding: dict[int, set[str]] = {}  # group index -> its images whose prediction is not stored

    def store(image_id: str, image: np.ndarray, prediction: np.ndarray) -> None:
        files.write_label_png(layout.prediction(image_id), prediction)
        finish(image_id, image, prediction)
        index = group_of[image_id]
        outstanding[index].discard(image_id)
        if not outstanding[index]:
            record(todo_batches[index])

    def collect(keep: int) -> None:
        """Store refined predictions until at most ``keep`` are still being refined."""
        while len(in_flight) > keep:
            completed, _ = futures.wait(in_flight, return_when=futures.FIRST_COMPLETED)
            for future in completed:
                image_id, image = in_flight.pop(future)
                store(image_id, image, future.result())

    try:
        for index, group in enumerate(todo_batches):
            images = [image_set.image(i) for i in group]
            with runtime.autocast(device, cfg.runtime.precision):
                probabilities = batch_probabilities(model, images, settings.scales, settings.flip)
            # an image not in todo: its batch is recomputed whole; its prediction stays as it is
            # (every batch here holds at least one image in todo, so its last store records it)
            outstanding[index] = {i for i in group if i in todo}
            for image_id, image, probs in zip(group, images, probabilities):
                if image_id not in todo:
                    continue
                group_of[image_id] = index
                prediction = probs.argmax(0).cpu().numpy().astype(np.uint8)
                if not settings.use_crf:
                    store(image_id, image, prediction)
                    continue
                unaries = probs.cpu().numpy() if settings.crf_unary == "softmax" else None
                refine = (image, prediction, num_classes, settings.crf_confidence, settings.crf, unaries)
                if crf_pool is None:
                    store(image_id, image, crf_refine(*refine))
                else:
                    in_flight[crf_pool.submit(crf_refine, *refine)] = (image_id, image)
            collect(keep=2 * crf_workers)  # bounded: each waiting image holds its (K, H, W) unaries
        collect(keep=0)
    finally:
        if crf_pool is not None:
            crf_pool.shutdown(wait=True, cancel_futures=True)
    progress.close()

    # integer counts: their sum over processes equals one process's matrix exactly
    gathered = distributed.all_gather_object((matrix, scored, sorted(finished)))
    matrix = metrics.ConfusionMatrix(num_classes)
    for part, _, _ in gathered:
        matrix.merge(part)
    scored = sum(rank_scored for _, rank_scored, _ in gathered)
    summary = {
        "images": len(image_set.ids),
        "images_scored": scored,
        "weakly_supervised": weakly,
        "gt_percentage": extra.get("gt_percentage"),
    }
    if scored:
        names = ["background"] + image_set.class_names
        result = {
            "split": settings.split,
            **summary,
            "mIoU": matrix.mean_iou(),
            "pixel_accuracy": matrix.pixel_accuracy(),
            "per_class_IoU": dict(zip(names, map(float, matrix.iou()))),
            "per_class_precision": dict(zip(names, map(float, matrix.precision()))),
            "per_class_recall": dict(zip(names, map(float, matrix.recall()))),
            "not_weakly_supervised_because": reasons,
            "class_names": names,
            "confusion_matrix": matrix.matrix.tolist(),
            "checkpoint": extra["checkpoint"],
            "step": extra.get("step"),
            "backbone": extra["backbone"],
            "settings": method,
        }
        summary.update(
            mIoU=result["mIoU"], pixel_accuracy=result["pixel_accuracy"], per_class_IoU=result["per_class_IoU"]
        )
    distributed.barrier()  # every overlay of every process is on disk (for tensorboard)
    if distributed.is_main():
        _write_manifest(run_dir, method, sorted(set().union(*(ids for _, _, ids in gathered))))
        writer = board.open_writer(cfg, STAGE)
        shown = [i for i in image_set.ids if i in overlay_ids and layout.overlay(i).exists()]
        for image_id in shown[:TENSORBOARD_PICTURES]:
            writer.add_image(
                f"{settings.split}/{image_id}", files.read_image(layout.overlay(image_id)), 0, dataformats="HWC"
            )
        if scored:
            writer.add_scalar("eval/mIoU", result["mIoU"], 0)
            writer.add_scalar("eval/pixel_accuracy", result["pixel_accuracy"], 0)
            for name, iou in result["per_class_IoU"].items():
                if math.isfinite(iou):
                    writer.add_scalar(f"eval_IoU/{name}", iou, 0)
            writer.add_figure("eval/confusion_matrix", confusion_figure(matrix, names), 0)
            board.write_report(cfg, STAGE, "report", result)
            report = markdown_report(board.json_safe(result))
            files.write_text(run_dir / "report.md", report)
            print(report)
        else:
            print(f"{settings.split}: no ground truth, so no scores; predictions in {layout.prediction('x').parent}")
        if not weakly:
            writer.add_text("warning", "NOT weakly supervised: " + "; ".join(reasons), 0)
        writer.close()
    distributed.barrier()  # report and manifest written before any process moves on
    return summary


MANIFEST = "predictions.json"


def _write_manifest(run_dir, method: dict, ids: list[str]) -> None:
    """Rank 0, at the end: one manifest of every reusable prediction; the per-process progress
    files it merges are removed."""
    files.write_text(run_dir / MANIFEST, json.dumps({"method": method, "ids": sorted(ids)}, indent=1))
    for progress in run_dir.glob("predictions.rank*.json"):
        progress.unlink(missing_ok=True)


def _reusable_predictions(run_dir, method: dict, overwrite: bool) -> set[str]:
    """Ids whose stored prediction came from this checkpoint and these settings: from the manifest
    of the last finished run and from the progress files of processes that were interrupted."""
    if overwrite:
        return set()
    ids: set[str] = set()
    for path in [run_dir / MANIFEST, *sorted(run_dir.glob("predictions.rank*.json"))]:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):  # absent, or unreadable: those predictions are recomputed
            continue
        if isinstance(manifest, dict) and manifest.get("method") == method:
            ids.update(manifest.get("ids", []))
    return ids
