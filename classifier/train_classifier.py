"""TRAIN_SEED: train the multi-label classifier on image-level labels.

BCE-with-logits on every class; random scale, crop and flip; SGD with a poly learning rate (backbone
at ``backbone_lr_mult`` of the head's). Every ``val_every`` steps: mAP, per-class AP and F1 on the
validation split to tensorboard; the best checkpoint by mAP and the last one (full training state,
resumed from on the next run) under checkpoints/classifier/.
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

import datasets
from classifier.data import ClassificationSamples
from classifier.models import MultiLabelClassifier, build_classifier
from common import board, checkpoint, metrics, runtime
from common.layout import Layout

STAGE = "train_seed"
CHECKPOINTS = "classifier"


def evaluate(model: MultiLabelClassifier, loader: DataLoader, device: torch.device,
             class_names: list[str]) -> dict:
    """mAP, per-class AP and F1 (at probability 0.5) over ``loader``."""
    was_training = model.training
    model.eval()
    scores, targets = [], []
    with torch.no_grad():
        for images, labels in loader:
            scores.append(torch.sigmoid(model(images.to(device))).cpu().numpy())
            targets.append(labels.numpy())
    model.train(was_training)
    result = metrics.multilabel_metrics(np.concatenate(scores), np.concatenate(targets))
    return {"mAP": result["mAP"], "micro_F1": result["micro_F1"],
            "AP": {name: float(v) for name, v in zip(class_names, result["AP"])},
            "F1": {name: float(v) for name, v in zip(class_names, result["F1"])}}


def _loader(samples, cfg, *, shuffle: bool, batch_size: int, drop_last: bool) -> DataLoader:
    workers = cfg.runtime.num_workers
    return DataLoader(samples, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=workers, worker_init_fn=runtime.worker_seed,
                      persistent_workers=workers > 0)


def _forever(loader: DataLoader):
    for _ in itertools.count():
        yield from loader


def run(cfg) -> dict:
    settings = cfg.classifier
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    train_set = datasets.build(cfg, "train")
    val_set = datasets.build(cfg, "val")
    if len(train_set) == 0:
        raise ValueError(f"training split {cfg.dataset.train_split!r} of {cfg.dataset.root} is empty")
    model = build_classifier(backbone=settings.backbone, num_classes=train_set.num_classes,
                             pretrained=settings.pretrained, weights_path=settings.weights_path,
                             output_stride=settings.output_stride).to(device)
    head = list(model.head_parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.SGD(
        [{"params": backbone, "lr": settings.lr * settings.backbone_lr_mult},
         {"params": head, "lr": settings.lr}],
        momentum=settings.momentum, weight_decay=settings.weight_decay)
    total_steps = max(1, settings.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, total_steps - 1) / total_steps) ** 0.9)

    last_path, best_path = layout.checkpoint(CHECKPOINTS, "last"), layout.checkpoint(CHECKPOINTS, "best")
    step, best = 0, {"mAP": float("-inf")}
    if last_path.exists() and not cfg.runtime.overwrite:
        state = checkpoint.load_training_state(last_path, model=model, optimizer=optimizer,
                                               scheduler=scheduler, map_location=device)
        step, best = state["step"], state["extra"].get("best", best)
        if state["extra"].get("class_names") != train_set.class_names:
            raise ValueError(f"{last_path} was trained on classes {state['extra'].get('class_names')}, "
                             f"not {train_set.class_names}; set runtime.overwrite = true to retrain")
        print(f"resuming classifier training from step {step} ({last_path})")
    if step >= settings.steps:
        print(f"classifier already trained for {step} steps; best val mAP {best['mAP']:.3f}")
        return {"mAP": best["mAP"], "steps": step, "AP": best.get("AP", {})}

    mean, std = model.mean, model.std
    train_samples = ClassificationSamples(train_set, crop_size=settings.crop_size, mean=mean, std=std,
                                          train=True, scale_min=settings.scale_min,
                                          scale_max=settings.scale_max)
    val_samples = ClassificationSamples(val_set, crop_size=settings.crop_size, mean=mean, std=std,
                                        train=False)
    batch_size = min(settings.batch_size, len(train_set))
    train_batches = _forever(_loader(train_samples, cfg, shuffle=True, batch_size=batch_size,
                                     drop_last=True))
    val_loader = _loader(val_samples, cfg, shuffle=False, batch_size=settings.batch_size, drop_last=False)
    writer = board.open_writer(cfg, STAGE)
    describe = {**model.describe(), "class_names": train_set.class_names}

    model.train()
    if settings.pretrained:
        model.freeze_batchnorm()
    progress = tqdm(range(step, settings.steps), initial=step, total=settings.steps, desc="train_seed")
    for step in progress:
        images, labels = next(train_batches)
        logits = model(images.to(device))
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        done = step + 1
        if done % 10 == 0 or done == settings.steps:
            writer.add_scalar("train/loss", loss.item(), done)
            writer.add_scalar("train/lr_head", optimizer.param_groups[1]["lr"], done)
            progress.set_postfix(loss=f"{loss.item():.3f}")
        if done % settings.val_every == 0 or done == settings.steps:
            if len(val_set):
                result = evaluate(model, val_loader, device, val_set.class_names)
                writer.add_scalar("val/mAP", result["mAP"], done)
                writer.add_scalar("val/micro_F1", result["micro_F1"], done)
                for name in val_set.class_names:
                    if not np.isnan(result["AP"][name]):
                        writer.add_scalar(f"val_AP/{name}", result["AP"][name], done)
                    if not np.isnan(result["F1"][name]):
                        writer.add_scalar(f"val_F1/{name}", result["F1"][name], done)
                progress.write(f"step {done}: val mAP {result['mAP']:.3f}")
            else:
                result = {"mAP": float("nan")}
            improved = not (result["mAP"] <= best["mAP"])  # NaN (no val set) keeps the latest
            if improved:
                best = {**result, "step": done}
                checkpoint.save_training_state(best_path, model=model, step=done,
                                               extra={**describe, "best": best})
            checkpoint.save_training_state(last_path, model=model, optimizer=optimizer,
                                           scheduler=scheduler, step=done,
                                           extra={**describe, "best": best})
    writer.close()
    print(f"classifier: best val mAP {best['mAP']:.3f} at step {best.get('step')}")
    return {"mAP": best["mAP"], "steps": settings.steps, "AP": best.get("AP", {})}
