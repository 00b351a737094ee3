"""TRAIN_DEEPLAB: DeepLabV3 on pseudo labels (and ``gt_percentage`` % of real masks).

SGD with a poly learning rate, the head at ``head_lr_mult`` x the backbone's; random scale, crop
and flip; ignore index 255. Every ``val_every`` steps the validation split (images with masks,
each at its own size) gives mIoU; best and last checkpoints under checkpoints/deeplab/, resumed
from on rerun. runs/train_deeplab/labels.json lists which images trained with which label.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import datasets
from common import board, checkpoint, runtime
from common.layout import Layout
from deeplab.data import IGNORE, SegmentationSamples, label_sources
from deeplab.inference import evaluate
from deeplab.models import NOT_WEAK_WARNING, build_deeplab

STAGE = "train_deeplab"
CHECKPOINTS = "deeplab"


def build_from_config(cfg, num_classes: int, pretrained: bool = True):
    settings = cfg.deeplab
    return build_deeplab(backbone=settings.backbone, num_classes=num_classes,
                         output_stride=settings.output_stride,
                         pretrained_backbone=settings.pretrained_backbone and pretrained,
                         weights_path=settings.weights_path,
                         segmentation_pretrained=settings.segmentation_pretrained and pretrained)


def run(cfg) -> dict:
    settings = cfg.deeplab
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    train_set = datasets.build(cfg, "train")
    val_set = datasets.build(cfg, "val")
    sources, report = label_sources(cfg, train_set, layout)
    board.write_report(cfg, STAGE, "labels", report)
    if report["skipped_without_label"]:
        print(f"{len(report['skipped_without_label'])} training images have neither a pseudo label nor a "
              f"selected mask and are skipped (listed in {layout.run_dir(STAGE) / 'labels.json'})")
    if not sources:
        raise ValueError("no training image has a label: run CREATE_GUIDE or raise deeplab.gt_percentage")
    print(f"training on {len(report['gt_images'])} real masks and {report['pseudo_images']} pseudo labels")

    model = build_from_config(cfg, train_set.num_classes + 1).to(device)
    head_ids = {id(p) for p in model.head.parameters()}
    optimizer = torch.optim.SGD(
        [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": settings.lr},
         {"params": list(model.head.parameters()), "lr": settings.lr * settings.head_lr_mult}],
        momentum=settings.momentum, weight_decay=settings.weight_decay)
    total = max(1, settings.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, total - 1) / total) ** settings.poly_power)

    last_path, best_path = layout.checkpoint(CHECKPOINTS, "last"), layout.checkpoint(CHECKPOINTS, "best")
    describe = {**model.describe(), "class_names": train_set.class_names,
                "gt_percentage": settings.gt_percentage}
    step, best = 0, {"mIoU": float("-inf")}
    if last_path.exists() and not cfg.runtime.overwrite:
        state = checkpoint.load_training_state(last_path, model=model, optimizer=optimizer,
                                               scheduler=scheduler, map_location=device)
        step, best = state["step"], state["extra"].get("best", best)
        if state["extra"].get("gt_percentage") != settings.gt_percentage:
            raise ValueError(f"{last_path} was trained with gt_percentage {state['extra'].get('gt_percentage')}, "
                             f"not {settings.gt_percentage}: use another paths.checkpoints or runtime.overwrite")
        print(f"resuming DeepLab training from step {step} ({last_path})")
    summary = {"gt_images": len(report["gt_images"]), "pseudo_images": report["pseudo_images"],
               "weakly_supervised": not settings.segmentation_pretrained}
    if step >= settings.steps:
        print(f"DeepLab already trained for {step} steps; best val mIoU {best['mIoU']:.3f}")
        return {**summary, "val_mIoU": best["mIoU"], "steps": step}

    samples = SegmentationSamples(train_set, sources, crop_size=settings.crop_size,
                                  scale_min=settings.scale_min, scale_max=settings.scale_max,
                                  mean=model.mean, std=model.std)
    workers = cfg.runtime.num_workers
    loader = DataLoader(samples, batch_size=min(settings.batch_size, len(samples)), shuffle=True,
                        drop_last=True, num_workers=workers, worker_init_fn=runtime.worker_seed,
                        persistent_workers=workers > 0)
    batches = (batch for _ in itertools.count() for batch in loader)
    val_ids = [i for i in val_set.ids if val_set.has_mask(i)]
    writer = board.open_writer(cfg, STAGE)
    if settings.segmentation_pretrained:
        writer.add_text("warning", NOT_WEAK_WARNING, 0)
    model.train()
    if settings.pretrained_backbone:
        model.freeze_backbone_batchnorm()
    progress = tqdm(range(step, settings.steps), initial=step, total=settings.steps, desc=STAGE)
    for step in progress:
        images, labels = next(batches)
        loss = F.cross_entropy(model(images.to(device)), labels.to(device), ignore_index=IGNORE)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        done = step + 1
        if done % 10 == 0 or done == settings.steps:
            writer.add_scalar("train/loss", loss.item(), done)
            writer.add_scalar("train/lr_backbone", optimizer.param_groups[0]["lr"], done)
            progress.set_postfix(loss=f"{loss.item():.3f}")
        if done % settings.val_every == 0 or done == settings.steps:
            if val_ids:
                matrix = evaluate(model, val_set, val_ids)
                result = {"mIoU": matrix.mean_iou(), "pixel_accuracy": matrix.pixel_accuracy()}
                writer.add_scalar("val/mIoU", result["mIoU"], done)
                progress.write(f"step {done}: val mIoU {result['mIoU']:.3f}")
            else:
                result = {"mIoU": float("nan")}
            if not (result["mIoU"] <= best["mIoU"]):  # NaN (no validation masks) keeps the latest
                best = {**result, "step": done}
                checkpoint.save_training_state(best_path, model=model, step=done, extra={**describe, "best": best})
            checkpoint.save_training_state(last_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                           step=done, extra={**describe, "best": best})
    writer.close()
    return {**summary, "val_mIoU": best["mIoU"], "steps": settings.steps}
