"""TRAIN_DEEPLAB: DeepLabV3 on pseudo labels (and ``gt_percentage`` % of real masks).

SGD with a poly learning rate, the head at ``head_lr_mult`` x the backbone's; random scale, crop
and flip; ignore index 255. Every ``val_every`` steps the validation split (images with masks,
each at its own size) gives mIoU; best (by val mIoU) and last checkpoints under
checkpoints/deeplab/; a rerun resumes from last (which holds optimiser, scheduler, step and random
state; batches depend only on (seed, step), so the resumed run sees what an uninterrupted one
would have). runs/train_deeplab/labels.json lists which images trained with which label.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import datasets
from common import board, checkpoint, runtime
from common.layout import Layout
from deeplab.data import IGNORE, SegmentationSamples, StepBatches, label_sources
from deeplab.inference import evaluate
from deeplab.models import NOT_WEAK_WARNING, build_deeplab

STAGE = "train_deeplab"
CHECKPOINTS = "deeplab"
# settings a checkpoint must share with the config to be resumed
RESUME_KEYS = ("backbone", "num_classes", "output_stride", "segmentation_pretrained", "class_names",
               "gt_percentage", "pretrained_backbone", "freeze_backbone_bn")


def build_from_config(cfg, num_classes: int):
    """The configured (untrained) DeepLab."""
    settings = cfg.deeplab
    return build_deeplab(backbone=settings.backbone, num_classes=num_classes,
                         output_stride=settings.output_stride,
                         pretrained_backbone=settings.pretrained_backbone,
                         weights_path=str(cfg.path(settings.weights_path)) if settings.weights_path else "",
                         segmentation_pretrained=settings.segmentation_pretrained,
                         segmentation_weights_path=(str(cfg.path(settings.segmentation_weights_path))
                                                    if settings.segmentation_weights_path else ""))


def supervision(segmentation_pretrained: bool, gt_images: int) -> tuple[bool, list[str]]:
    """(weakly supervised?, the reasons it is not): pixel labels reached the model when it started
    from segmentation weights or trained on any real mask."""
    reasons = []
    if segmentation_pretrained:
        reasons.append(NOT_WEAK_WARNING)
    if gt_images:
        reasons.append(f"{gt_images} training images used their ground-truth mask (deeplab.gt_percentage)")
    return not reasons, reasons


def make_optimizer(model, settings):
    """SGD with the head at ``head_lr_mult`` x the backbone's rate, and the poly schedule."""
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    optimizer = torch.optim.SGD(
        [{"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": settings.lr},
         {"params": head, "lr": settings.lr * settings.head_lr_mult}],
        momentum=settings.momentum, weight_decay=settings.weight_decay)
    total = max(1, settings.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1 - step / total) ** settings.poly_power)
    return optimizer, scheduler


def _resume(cfg, path, model, optimizer, scheduler, describe: dict, device) -> tuple[int, dict]:
    state = checkpoint.load_training_state(path, model=model, optimizer=optimizer, scheduler=scheduler,
                                           map_location=device)
    saved = state["extra"]
    different = [k for k in RESUME_KEYS if saved.get(k) != describe[k]]
    if different:
        raise ValueError(f"{path} was trained with other settings ("
                         + ", ".join(f"{k}: {saved.get(k)!r} there, {describe[k]!r} now" for k in different)
                         + "): set runtime.overwrite = True to start again, or use another paths.checkpoints")
    return state["step"], saved.get("best", {"mIoU": float("-inf")})


def run(cfg, *, stop_after: int | None = None) -> dict:
    """Train (or resume) DeepLab; returns {"val_mIoU", "steps", "gt_images", "pseudo_images",
    "weakly_supervised"}. ``stop_after``: stop once this many steps are done, as an interruption
    would (last checkpoint saved); the next run resumes."""
    settings = cfg.deeplab
    if settings.batch_size < 2:
        raise ValueError("deeplab.batch_size must be at least 2: the ASPP image-pooling branch has a "
                         "BatchNorm over a 1x1 map, which needs two samples to train")
    runtime.seed_everything(cfg.runtime.seed)
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    train_set = datasets.build(cfg, "train")
    val_set = datasets.build(cfg, "val")
    sources, report = label_sources(cfg, train_set, layout)
    weakly, reasons = supervision(settings.segmentation_pretrained, len(report["gt_images"]))
    report.update(weakly_supervised=weakly, not_weakly_supervised_because=reasons)
    board.write_report(cfg, STAGE, "labels", report)
    skipped = report["skipped_without_label"]
    if skipped:
        print(f"WARNING: {len(skipped)} training images have neither a pseudo label (in "
              f"{report['pseudo_label_folder']}; CREATE_GUIDE writes them) nor a chosen mask and are "
              f"skipped: {', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''} "
              f"(all listed in {layout.run_dir(STAGE) / 'labels.json'})", flush=True)
    if not sources:
        raise ValueError(f"no training image of {cfg.path(cfg.dataset.root)} has a label: run CREATE_GUIDE "
                         f"or raise deeplab.gt_percentage")
    print(f"DeepLab trains on {len(report['gt_images'])} real masks and {report['pseudo_images']} pseudo labels"
          + ("" if weakly else " -- NOT weakly supervised: " + "; ".join(reasons)), flush=True)

    model = build_from_config(cfg, train_set.num_classes + 1).to(device)
    freeze_bn = settings.freeze_backbone_bn and (settings.pretrained_backbone or settings.segmentation_pretrained)
    optimizer, scheduler = make_optimizer(model, settings)
    last_path, best_path = layout.checkpoint(CHECKPOINTS, "last"), layout.checkpoint(CHECKPOINTS, "best")
    describe = {**model.describe(), "class_names": train_set.class_names, "gt_percentage": settings.gt_percentage,
                "pretrained_backbone": settings.pretrained_backbone, "freeze_backbone_bn": freeze_bn,
                "weakly_supervised": weakly, "not_weakly_supervised_because": reasons}
    step, best = 0, {"mIoU": float("-inf")}
    if last_path.exists() and not cfg.runtime.overwrite:
        step, best = _resume(cfg, last_path, model, optimizer, scheduler, describe, device)
        print(f"resuming DeepLab training at step {step} of {settings.steps} ({last_path})", flush=True)
    summary = {"gt_images": len(report["gt_images"]), "pseudo_images": report["pseudo_images"],
               "weakly_supervised": weakly}
    if step >= settings.steps:
        print(f"DeepLab already trained for {step} steps ({last_path}); best val mIoU {best['mIoU']:.3f}")
        return {**summary, "val_mIoU": _finite(best["mIoU"]), "steps": step}

    samples = SegmentationSamples(train_set, sources, crop_size=settings.crop_size,
                                  scale_min=settings.scale_min, scale_max=settings.scale_max,
                                  mean=model.mean, std=model.std, seed=cfg.runtime.seed)
    end = settings.steps if stop_after is None else min(settings.steps, stop_after)
    batches = StepBatches(len(samples), settings.batch_size, seed=cfg.runtime.seed, start=step, total=end)
    # the loader's own generator keeps its draws out of the global stream (dropout) that resuming restores
    loader = DataLoader(samples, batch_sampler=batches, num_workers=cfg.runtime.num_workers,
                        worker_init_fn=runtime.worker_seed,
                        generator=torch.Generator().manual_seed(cfg.runtime.seed))
    val_ids = [i for i in val_set.ids if val_set.has_mask(i)]
    writer = board.open_writer(cfg, STAGE)
    for reason in reasons:
        writer.add_text("warning", reason, step)

    saved = {"step": step}

    def save_last(done: int) -> None:
        if done != saved["step"] or not last_path.exists():
            checkpoint.save_training_state(last_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                           step=done, extra={**describe, "best": best})
            saved["step"] = done

    model.train()
    model.freeze_backbone_batchnorm(freeze_bn)
    progress = tqdm(total=settings.steps, initial=step, desc=STAGE, unit="step")
    done = step
    try:
        for images, labels in loader:
            labels = labels.to(device)
            logits = model(images.to(device))
            # summed over labelled pixels / their count: a crop of nothing but ignore gives 0, not NaN
            loss = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") \
                / (labels != IGNORE).sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            done += 1
            progress.update(1)
            writer.add_scalar("train/loss", loss.item(), done)
            writer.add_scalar("train/lr_backbone", optimizer.param_groups[0]["lr"], done)
            writer.add_scalar("train/lr_head", optimizer.param_groups[1]["lr"], done)
            if done % 10 == 0:
                progress.set_postfix(loss=f"{loss.item():.3f}")
            if done % settings.val_every == 0 or done == settings.steps:
                result = _validate(model, val_set, val_ids, settings.batch_size)
                if val_ids:
                    writer.add_scalar("val/mIoU", result["mIoU"], done)
                    writer.add_scalar("val/pixel_accuracy", result["pixel_accuracy"], done)
                    progress.write(f"step {done}: val mIoU {result['mIoU']:.3f}")
                if not (result["mIoU"] <= best["mIoU"]):  # NaN (no validation masks): keep the latest
                    best = {**result, "step": done}
                    checkpoint.save_training_state(best_path, model=model, step=done,
                                                   extra={**describe, "best": best})
                save_last(done)
    except KeyboardInterrupt:
        save_last(done)
        progress.write(f"interrupted: saved step {done} to {last_path}; rerun to resume")
        raise
    finally:
        progress.close()
        writer.close()
    save_last(done)  # stopped early (stop_after) between validations; else already saved
    return {**summary, "val_mIoU": _finite(best["mIoU"]), "steps": done}


def _finite(value: float) -> float:
    return float("nan") if value == float("-inf") else value


def _validate(model, val_set, val_ids: list[str], batch_size: int) -> dict:
    if not val_ids:
        return {"mIoU": float("nan")}
    progress = tqdm(total=len(val_ids), desc="val", leave=False)
    matrix = evaluate(model, val_set, val_ids, batch_size=batch_size, progress=progress)
    progress.close()
    return {"mIoU": matrix.mean_iou(), "pixel_accuracy": matrix.pixel_accuracy()}
