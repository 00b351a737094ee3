"""TRAIN_SEED: train the multi-label classifier on image-level labels.

BCE-with-logits on every class; random scale, crop and flip; SGD with a poly learning rate (backbone
at ``backbone_lr_mult`` of the head's). Every ``val_every`` steps: mAP, per-class AP and F1 on the
validation split to tensorboard; the best checkpoint by mAP and the last one (full training state,
resumed from on the next run) under checkpoints/classifier/. The loop itself (step-deterministic
batches, resume, checkpoints, precision, several processes) is ``common.training.fit``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import datasets
from classifier.data import ClassificationSamples
from classifier.models import MultiLabelClassifier, build_classifier
from common import backbones, distributed, runtime, training
from common.errors import InputError
from datasets import label_stats

STAGE = "train_seed"
CHECKPOINTS = "classifier"
# settings a checkpoint must share with the config to be resumed (all change the network or its classes)
RESUME_KEYS = ("backbone", "num_classes", "output_stride", "class_names")


def evaluate(
    model: MultiLabelClassifier,
    loader: DataLoader,
    device: torch.device,
    class_names: list[str],
    precision: str = "fp32",
) -> dict:
    """mAP, per-class AP and F1 (at probability 0.5) over ``loader``."""
    was_training = model.training
    model.eval()
    scores, targets = [], []
    with torch.no_grad(), runtime.autocast(device, precision):
        for images, labels in loader:
            logits = model(runtime.to_device(images, device))
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
            targets.append(labels.numpy())
    model.train(was_training)
    result = metrics_of(np.concatenate(scores), np.concatenate(targets), class_names)
    return result


def metrics_of(scores: np.ndarray, targets: np.ndarray, class_names: list[str]) -> dict:
    from common import metrics

    result = metrics.multilabel_metrics(scores, targets)
    return {
        "mAP": result["mAP"],
        "micro_F1": result["micro_F1"],
        "AP": {name: float(v) for name, v in zip(class_names, result["AP"])},
        "F1": {name: float(v) for name, v in zip(class_names, result["F1"])},
    }


def make_optimizer(model: MultiLabelClassifier, settings):
    """SGD with the backbone at ``backbone_lr_mult`` x the head's rate, and the poly schedule."""
    head = list(model.head_parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.SGD(
        [{"params": backbone, "lr": settings.lr * settings.backbone_lr_mult}, {"params": head, "lr": settings.lr}],
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    return optimizer, training.poly_schedule(optimizer, settings.steps, 0.9)


def bce_loss(network, batch, device) -> torch.Tensor:
    images, labels = batch
    logits = network(runtime.to_device(images, device))
    return F.binary_cross_entropy_with_logits(logits.float(), runtime.to_device(labels, device))


def run(cfg, *, stop_after: int | None = None) -> dict:
    """Train (or resume) the classifier; returns {"mAP", "steps", "AP"}. ``stop_after``: stop once
    this many steps are done, as an interruption would (last checkpoint saved)."""
    settings = cfg.classifier
    device = runtime.select_device(cfg.runtime.device)
    distributed.init_process_group_if_needed(device)
    device = distributed.device_for_rank(device)
    train_set = datasets.build(cfg, "train")
    val_set = datasets.build(cfg, "val")
    if len(train_set) == 0:
        raise InputError(f"training split {cfg.dataset.train_split!r} of {cfg.dataset.root} is empty")
    # said before training, so that a low IoU of such classes later is read as the data set's limit
    entangled = label_stats.companions(label_stats.label_matrix(train_set), train_set.class_names)
    if distributed.is_main():
        for companion in entangled:
            print(f"note: {companion.message()}", flush=True)
    model = build_classifier(
        backbone=settings.backbone,
        num_classes=train_set.num_classes,
        pretrained=settings.pretrained,
        weights_path=backbones.resolved_weights_path(cfg, settings.weights_path),
        output_stride=settings.output_stride,
    ).to(device)
    optimizer, scheduler = make_optimizer(model, settings)
    mean, std = model.mean, model.std
    train_samples = ClassificationSamples(
        train_set,
        crop_size=settings.crop_size,
        mean=mean,
        std=std,
        train=True,
        scale_min=settings.scale_min,
        scale_max=settings.scale_max,
        seed=cfg.runtime.seed,
    )
    val_samples = ClassificationSamples(val_set, crop_size=settings.crop_size, mean=mean, std=std, train=False)
    val_loader = training.eval_loader(
        val_samples,
        batch_size=settings.batch_size,
        num_workers=cfg.runtime.num_workers,
        device=device,
        seed=cfg.runtime.seed,
    )
    precision = cfg.runtime.precision

    def validate(net, step: int, writer) -> dict:
        if not len(val_set):
            return {"mAP": float("nan")}
        result = evaluate(net, val_loader, device, val_set.class_names, precision)
        writer.add_scalar("val/mAP", result["mAP"], step)
        writer.add_scalar("val/micro_F1", result["micro_F1"], step)
        for name in val_set.class_names:
            if not np.isnan(result["AP"][name]):
                writer.add_scalar(f"val_AP/{name}", result["AP"][name], step)
            if not np.isnan(result["F1"][name]):
                writer.add_scalar(f"val_F1/{name}", result["F1"][name], step)
        print(f"step {step}: val mAP {result['mAP']:.3f}", flush=True)
        return result

    def train_mode(net) -> None:
        net.train()
        if settings.pretrained:  # ImageNet statistics: small multi-label batches would only add noise
            net.freeze_batchnorm()

    spec = training.TrainingSpec(
        stage=STAGE,
        checkpoints=CHECKPOINTS,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        steps=settings.steps,
        val_every=settings.val_every,
        batch_size=min(settings.batch_size, len(train_set)),
        samples=train_samples,
        loss=bce_loss,
        metric="mAP",
        describe={**model.describe(), "class_names": train_set.class_names},
        resume_keys=RESUME_KEYS,
        validate=validate,
        train_mode=train_mode,
        memory_format=cfg.runtime.memory_format,
    )
    outcome = training.fit(cfg, spec, device=device, stop_after=stop_after)
    best = outcome.best
    if not outcome.trained:
        print(f"classifier already trained for {outcome.step} steps; best val mAP {best['mAP']:.3f}")
    elif distributed.is_main():
        print(f"classifier: best val mAP {best['mAP']:.3f} at step {best.get('step')}")
    return {
        "mAP": best["mAP"],
        "steps": outcome.step,
        "AP": best.get("AP", {}),
        "entangled_classes": [
            {"class": c.name, "with": c.partner, "images": c.images, "shared": c.shared} for c in entangled
        ],
    }
