"""EVAL_DEEPLAB: segment every image of ``eval.split`` at its own size and score it.

Optional multi-scale + flip averaging and the original's CRF post-processing. Writes predictions
(VOC palette PNGs) and side-by-side overlays (image | ground truth | prediction) under tmp/deeplab/;
where masks exist, the confusion matrix, mIoU, per-class IoU and pixel accuracy go to tensorboard
and to runs/eval_deeplab/report.{json,md}. A folder of new photos gets predictions only.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

import datasets
from common import board, files, metrics, runtime
from common.crf import CrfParams
from common.layout import Layout
from deeplab.inference import class_probabilities, crf_refine
from deeplab.models import NOT_WEAK_WARNING, build_deeplab

STAGE = "eval_deeplab"


def load_trained(cfg, device):
    layout = Layout(cfg)
    path = next((layout.checkpoint("deeplab", w) for w in ("best", "last")
                 if layout.checkpoint("deeplab", w).exists()), None)
    if path is None:
        raise FileNotFoundError(f"no trained DeepLab in {layout.checkpoint('deeplab').parent}: "
                                f"run TRAIN_DEEPLAB first (python main.py --stages train_deeplab)")
    state = torch.load(path, map_location="cpu", weights_only=False)
    extra = state["extra"]
    model = build_deeplab(backbone=extra["backbone"], num_classes=extra["num_classes"],
                          output_stride=extra["output_stride"], pretrained_backbone=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), extra


def confusion_figure(matrix: metrics.ConfusionMatrix, names: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.matrix.astype(np.float64)
    rows = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    figure, axis = plt.subplots(figsize=(1 + 0.45 * len(names), 1 + 0.45 * len(names)))
    axis.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(names)), names, rotation=90)
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("ground truth (row-normalised)")
    figure.tight_layout()
    return figure


def markdown_report(result: dict) -> str:
    lines = [f"# DeepLab evaluation on {result['split']} ({result['images_scored']} images with masks)", ""]
    if not result["weakly_supervised"]:
        lines += [f"**{NOT_WEAK_WARNING}**", ""]
    lines += [f"- mIoU: {result['mIoU']:.4f}", f"- pixel accuracy: {result['pixel_accuracy']:.4f}",
              f"- gt_percentage: {result['gt_percentage']}", "", "| class | IoU |", "|---|---|"]
    lines += [f"| {name} | {iou:.4f} |" for name, iou in result["per_class_IoU"].items()]
    return "\n".join(lines) + "\n"


def run(cfg) -> dict:
    settings = cfg.eval
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    model, extra = load_trained(cfg, device)
    if extra.get("segmentation_pretrained"):
        print("WARNING: " + NOT_WEAK_WARNING)
    image_set = datasets.build(cfg, settings.split)
    matrix = metrics.ConfusionMatrix(image_set.num_classes + 1)
    crf = CrfParams(gaussian_sxy=settings.crf_gaussian_sxy, gaussian_compat=settings.crf_gaussian_compat,
                    bilateral_sxy=settings.crf_bilateral_sxy, bilateral_srgb=settings.crf_bilateral_srgb,
                    bilateral_compat=settings.crf_bilateral_compat, iterations=settings.crf_iterations)
    writer = board.open_writer(cfg, STAGE)
    overlays = len(image_set) if settings.overlays < 0 else settings.overlays
    scored = 0
    for index, image_id in enumerate(tqdm(image_set.ids, desc=f"eval {settings.split}")):
        image = image_set.image(image_id)
        prediction = class_probabilities(model, image, settings.scales, settings.flip).argmax(0)
        prediction = prediction.cpu().numpy().astype(np.uint8)
        if settings.crf:
            prediction = crf_refine(image, prediction, image_set.num_classes + 1, settings.crf_confidence, crf)
        files.write_label_png(layout.prediction(image_id), prediction)
        mask = image_set.mask(image_id)
        if mask is not None:
            matrix.update(mask, prediction)
            scored += 1
        if index < overlays:
            truth = files.colorize(mask) if mask is not None else np.zeros_like(image)
            picture = np.concatenate([image, truth, files.colorize(prediction)], axis=1)
            files.write_rgb(layout.overlay(image_id), picture)
            if index < 8:
                writer.add_image(f"{settings.split}/{image_id}", picture, 0, dataformats="HWC")
    summary = {"images": len(image_set), "weakly_supervised": not extra.get("segmentation_pretrained", False),
               "gt_percentage": extra.get("gt_percentage")}
    if scored:
        names = ["background"] + image_set.class_names
        result = {"split": settings.split, "images_scored": scored, "mIoU": matrix.mean_iou(),
                  "pixel_accuracy": matrix.pixel_accuracy(),
                  "per_class_IoU": {n: float(v) for n, v in zip(names, matrix.iou())},
                  "confusion_matrix": matrix.matrix.tolist(), **summary}
        writer.add_scalar("eval/mIoU", result["mIoU"], 0)
        writer.add_scalar("eval/pixel_accuracy", result["pixel_accuracy"], 0)
        writer.add_figure("eval/confusion_matrix", confusion_figure(matrix, names), 0)
        board.write_report(cfg, STAGE, "report", result)
        files.write_text(layout.run_dir(STAGE) / "report.md", markdown_report(result))
        print(markdown_report(result))
        summary.update(mIoU=result["mIoU"], pixel_accuracy=result["pixel_accuracy"],
                       per_class_IoU=result["per_class_IoU"])
    else:
        print(f"{settings.split}: no ground truth; predictions written to {layout.prediction('x').parent}")
    writer.close()
    return summary
