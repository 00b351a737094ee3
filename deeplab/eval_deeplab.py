"""EVAL_DEEPLAB: segment every image of ``eval.split`` at its own size and score it.

Images are batched with padding to a multiple of the output stride that is cut off before
scoring; optional multi-scale + flip averaging and the original's CRF post-processing. Writes
predictions (VOC palette PNGs, ``Layout.prediction``) and side-by-side overlays (image | ground
truth | prediction, ``Layout.overlay``); where masks exist, the confusion matrix, mIoU, per-class
IoU and pixel accuracy go to tensorboard and to runs/eval_deeplab/report.{json,md}. A folder of new
photos gets predictions only. Predictions made by the same checkpoint with the same settings are
reused on a rerun (runs/eval_deeplab/predictions.json records which) unless runtime.overwrite.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import numpy as np
import torch
from tqdm import tqdm

import datasets
from common import board, files, metrics, runtime
from common.crf import CrfParams
from common.layout import Layout
from deeplab.inference import batch_probabilities, crf_refine, size_batches
from deeplab.models import build_deeplab

STAGE = "eval_deeplab"
TENSORBOARD_PICTURES = 8


def checkpoint_path(cfg):
    """checkpoints/deeplab/best.pt, else last.pt; FileNotFoundError naming the folder if neither."""
    layout = Layout(cfg)
    for which in ("best", "last"):
        if layout.checkpoint("deeplab", which).exists():
            return layout.checkpoint("deeplab", which)
    raise FileNotFoundError(f"no trained DeepLab in {layout.checkpoint('deeplab').parent} (best.pt or "
                            f"last.pt): run TRAIN_DEEPLAB first (python main.py --stages train_deeplab)")


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
    model = build_deeplab(backbone=extra["backbone"], num_classes=extra["num_classes"],
                          output_stride=extra["output_stride"], pretrained_backbone=False)
    model.load_state_dict(state["model"])
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    return model.to(device).eval(), {**extra, "checkpoint": str(path), "step": state.get("step")}, digest


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
            axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if value > 0.5 else "black")
    axis.set_xticks(range(len(names)), names, rotation=90)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("ground truth (row-normalised)")
    figure.tight_layout()
    return figure


def markdown_report(result: dict) -> str:
    """The report as markdown: the supervision flag first, then the scores and per-class IoU."""
    lines = [f"# DeepLab evaluation on {result['split']} ({result['images_scored']} of "
             f"{result['images']} images with masks)", ""]
    if not result["weakly_supervised"]:
        lines += ["**NOT weakly supervised:** " + "; ".join(result["not_weakly_supervised_because"]), ""]
    lines += [f"- mIoU: {result['mIoU']:.4f}", f"- pixel accuracy: {result['pixel_accuracy']:.4f}",
              f"- checkpoint: {result['checkpoint']} (step {result['step']}, backbone {result['backbone']})",
              f"- gt_percentage: {result['gt_percentage']}",
              f"- scales {result['settings']['scales']}, flip {result['settings']['flip']}, "
              f"CRF {result['settings']['crf']}", "",
              "| class | IoU | precision | recall |", "|---|---|---|---|"]
    for name in result["per_class_IoU"]:
        cells = [result[key][name] for key in ("per_class_IoU", "per_class_precision", "per_class_recall")]
        lines.append(f"| {name} | " + " | ".join("-" if v is None or not math.isfinite(v) else f"{v:.4f}"
                                                 for v in cells) + " |")
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:
    """Evaluate the trained DeepLab on ``eval.split``; returns {"mIoU", "pixel_accuracy",
    "per_class_IoU", "images", "weakly_supervised"} (scores only where masks exist)."""
    settings = cfg.eval
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    model, extra, digest = load_trained(cfg, device)
    weakly = extra.get("weakly_supervised", not extra.get("segmentation_pretrained", False))
    reasons = extra.get("not_weakly_supervised_because", [])
    if not weakly:
        print("WARNING: this DeepLab is NOT weakly supervised: " + "; ".join(reasons), flush=True)
    image_set = datasets.build(cfg, settings.split)
    if image_set.num_classes + 1 != extra["num_classes"]:
        raise ValueError(f"{extra['checkpoint']} predicts {extra['num_classes'] - 1} classes, the "
                         f"{settings.split} split of {cfg.path(cfg.dataset.root)} has {image_set.num_classes}")
    num_classes = extra["num_classes"]
    crf = CrfParams(gaussian_sxy=settings.crf_gaussian_sxy, gaussian_compat=settings.crf_gaussian_compat,
                    bilateral_sxy=settings.crf_bilateral_sxy, bilateral_srgb=settings.crf_bilateral_srgb,
                    bilateral_compat=settings.crf_bilateral_compat, iterations=settings.crf_iterations)
    method = {"checkpoint_sha1": digest, "scales": list(settings.scales), "flip": settings.flip,
              "crf": settings.crf, "crf_unary": settings.crf_unary, "crf_confidence": settings.crf_confidence,
              "crf_params": dataclasses.asdict(crf) if settings.crf else None}
    manifest_path = layout.run_dir(STAGE) / "predictions.json"
    reusable = _reusable_predictions(manifest_path, method, cfg.runtime.overwrite)
    todo = [i for i in image_set.ids if not (i in reusable and layout.prediction(i).exists())]
    if len(todo) < len(image_set.ids):
        print(f"{len(image_set.ids) - len(todo)} predictions by this checkpoint and settings are already in "
              f"{layout.prediction('x').parent}; reused (runtime.overwrite recomputes)")
    done_ids = sorted(set(image_set.ids) - set(todo))

    matrix = metrics.ConfusionMatrix(num_classes)
    writer = board.open_writer(cfg, STAGE)
    overlay_ids = set(image_set.ids if settings.overlays < 0 else image_set.ids[:settings.overlays])
    scored, pictures = 0, 0
    progress = tqdm(total=len(image_set.ids), desc=f"eval {settings.split}", unit="img")

    def finish(image_id: str, image: np.ndarray | None, prediction: np.ndarray) -> None:
        nonlocal scored, pictures
        mask = image_set.mask(image_id)
        if mask is not None:
            matrix.update(mask, prediction)
            scored += 1
        if image_id in overlay_ids and (image is not None or not layout.overlay(image_id).exists()):
            image = image_set.image(image_id) if image is None else image
            truth = files.colorize(mask) if mask is not None else np.full_like(image, 255)
            picture = np.concatenate([image, truth, files.colorize(prediction)], axis=1)
            files.write_rgb(layout.overlay(image_id), picture)
            if pictures < TENSORBOARD_PICTURES:
                writer.add_image(f"{settings.split}/{image_id}", picture, 0, dataformats="HWC")
                pictures += 1
        progress.update(1)

    for image_id in done_ids:
        finish(image_id, None, files.read_label_png(layout.prediction(image_id)))
    sizes = {i: image_set.image_size(i) for i in todo}
    for group in size_batches(todo, sizes, settings.batch_size):
        images = [image_set.image(i) for i in group]
        for image_id, image, probs in zip(group, images, batch_probabilities(model, images, settings.scales,
                                                                              settings.flip)):
            prediction = probs.argmax(0).cpu().numpy().astype(np.uint8)
            if settings.crf:
                unaries = probs.cpu().numpy() if settings.crf_unary == "softmax" else None
                prediction = crf_refine(image, prediction, num_classes, settings.crf_confidence, crf, unaries)
            files.write_label_png(layout.prediction(image_id), prediction)
            finish(image_id, image, prediction)
        # recorded as we go, so an interrupted evaluation keeps what it finished
        reusable.update(group)
        files.write_text(manifest_path, json.dumps({"method": method, "ids": sorted(reusable)}, indent=1))
    progress.close()

    summary = {"images": len(image_set.ids), "images_scored": scored, "weakly_supervised": weakly,
               "gt_percentage": extra.get("gt_percentage")}
    if scored:
        names = ["background"] + image_set.class_names
        result = {"split": settings.split, **summary, "mIoU": matrix.mean_iou(),
                  "pixel_accuracy": matrix.pixel_accuracy(),
                  "per_class_IoU": dict(zip(names, map(float, matrix.iou()))),
                  "per_class_precision": dict(zip(names, map(float, matrix.precision()))),
                  "per_class_recall": dict(zip(names, map(float, matrix.recall()))),
                  "not_weakly_supervised_because": reasons, "class_names": names,
                  "confusion_matrix": matrix.matrix.tolist(), "checkpoint": extra["checkpoint"],
                  "step": extra.get("step"), "backbone": extra["backbone"], "settings": method}
        writer.add_scalar("eval/mIoU", result["mIoU"], 0)
        writer.add_scalar("eval/pixel_accuracy", result["pixel_accuracy"], 0)
        for name, iou in result["per_class_IoU"].items():
            if math.isfinite(iou):
                writer.add_scalar(f"eval_IoU/{name}", iou, 0)
        writer.add_figure("eval/confusion_matrix", confusion_figure(matrix, names), 0)
        board.write_report(cfg, STAGE, "report", result)
        report = markdown_report(board.json_safe(result))
        files.write_text(layout.run_dir(STAGE) / "report.md", report)
        print(report)
        summary.update(mIoU=result["mIoU"], pixel_accuracy=result["pixel_accuracy"],
                       per_class_IoU=result["per_class_IoU"])
    else:
        print(f"{settings.split}: no ground truth, so no scores; predictions in {layout.prediction('x').parent}")
    if not weakly:
        writer.add_text("warning", "NOT weakly supervised: " + "; ".join(reasons), 0)
    writer.close()
    return summary


def _reusable_predictions(manifest_path, method: dict, overwrite: bool) -> set[str]:
    """Ids whose stored prediction came from this checkpoint and these settings."""
    if overwrite or not manifest_path.exists():
        return set()
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return set()
    return set(manifest.get("ids", [])) if manifest.get("method") == method else set()
