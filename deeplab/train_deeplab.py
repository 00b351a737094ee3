"""TRAIN_DEEPLAB: DeepLabV3 on pseudo labels (and ``gt_percentage`` % of real masks).

SGD with a poly learning rate, the head at ``head_lr_mult`` x the backbone's; random scale, crop
and flip; ignore index 255. Every ``val_every`` steps the validation split (images with masks,
each at its own size) gives mIoU; best (by val mIoU) and last checkpoints under
checkpoints/deeplab/ (with ``deeplab.average_decay``, validation and both files use the moving
average of the weights); a rerun resumes from last (which holds optimiser, scheduler, step and random
state; batches depend only on (seed, step), so the resumed run sees what an uninterrupted one
would have). runs/train_deeplab/labels.json lists which images trained with which label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

import datasets
from common import backbones, board, distributed, provenance, runtime, training
from common.layout import Layout
from deeplab.data import IGNORE, SegmentationSamples, label_sources
from deeplab.inference import evaluate
from deeplab.models import NOT_WEAK_WARNING, build_deeplab
from deeplab.segmenter import CheckpointError, load_checkpoint

STAGE = "train_deeplab"
CHECKPOINTS = "deeplab"
# settings a checkpoint must share with the config to be resumed
RESUME_KEYS = (
    "backbone",
    "num_classes",
    "output_stride",
    "segmentation_pretrained",
    "class_names",
    "gt_percentage",
    "pretrained_backbone",
    "freeze_backbone_bn",
    # the start's bytes, not its path: a moved bench folder resumes, a changed file at the same path does not
    "init_checkpoint_sha1",
    "backbone_from_classifier",
)


def starts_from_trained_weights(settings) -> bool:
    """Whether deeplab.init_checkpoint or deeplab.backbone_from_classifier replaces the whole
    backbone's starting weights (so ImageNet's are not needed)."""
    return bool(settings.init_checkpoint) or settings.backbone_from_classifier


def build_from_config(cfg, num_classes: int):
    """The configured (untrained) DeepLab. Where another trained network's weights replace the
    backbone's at once, ImageNet's are not loaded: no download, and no file needed offline."""
    settings = cfg.deeplab
    return build_deeplab(
        backbone=settings.backbone,
        num_classes=num_classes,
        output_stride=settings.output_stride,
        pretrained_backbone=settings.pretrained_backbone and not starts_from_trained_weights(settings),
        weights_path=backbones.resolved_weights_path(cfg, settings.weights_path),
        segmentation_pretrained=settings.segmentation_pretrained,
        segmentation_weights_path=backbones.resolved_weights_path(cfg, settings.segmentation_weights_path),
    )


def supervision(segmentation_pretrained: bool, gt_images: int, initial: dict | None = None) -> tuple[bool, list[str]]:
    """(weakly supervised?, the reasons it is not): pixel labels reached the model when it started
    from segmentation weights or from a DeepLab that had them (``initial``: the description of
    deeplab.init_checkpoint), or trained on any real mask."""
    reasons = []
    if segmentation_pretrained:
        reasons.append(NOT_WEAK_WARNING)
    if initial is not None and not initial.get("weakly_supervised", False):
        why = "; ".join(initial.get("not_weakly_supervised_because") or ["it does not say it was weakly supervised"])
        reasons.append(
            f"starts from {initial['checkpoint']} (deeplab.init_checkpoint), trained with pixel labels: {why}"
        )
    if gt_images:
        reasons.append(f"{gt_images} training images used their ground-truth mask (deeplab.gt_percentage)")
    return not reasons, reasons


def initial_network(cfg, class_names: list[str]):
    """The DeepLab deeplab.init_checkpoint holds and its description, or (None, None) when it is
    unset; refused, naming the file, when it is another backbone, output stride or class list."""
    settings = cfg.deeplab
    if not settings.init_checkpoint:
        return None, None
    # building the network draws a random initialisation: not from the stream training uses, so a
    # run started from a checkpoint sees the dropout masks a run from ImageNet would
    with torch.random.fork_rng(devices=[]):
        network, description = load_checkpoint(cfg.path(settings.init_checkpoint))
    expected = {
        "backbone": settings.backbone,
        "output_stride": settings.output_stride,
        "class_names": list(class_names),
    }
    different = [k for k, v in expected.items() if description.get(k) != v]
    if different:
        listed = ", ".join(f"{k}: {description.get(k)!r} there, {expected[k]!r} now" for k in different)
        raise CheckpointError(f"deeplab.init_checkpoint {description['checkpoint']} is another network ({listed})")
    return network, description


def load_classifier_backbone(cfg, model, class_names: list[str]) -> str:
    """Copy TRAIN_SEED's trained classifier's backbone weights into ``model``'s backbone
    (deeplab.backbone_from_classifier); returns what was loaded, in words. The two networks hold
    the same layers under different names (a classification and a dense-feature wrapper), so the
    tensors are paired in order, and refused, naming the first mismatch, unless every pair agrees
    in kind and shape. The classifier's layers after the last one DeepLab has (its head) are left."""
    from classifier import load_trained

    # building the classifier draws a random initialisation: not from the stream training uses
    with torch.random.fork_rng(devices=[]):
        classifier = load_trained(cfg, class_names, torch.device("cpu"))
    trained_as = classifier.describe()["backbone"]
    if trained_as != cfg.deeplab.backbone:
        raise ValueError(
            f"deeplab.backbone_from_classifier: TRAIN_SEED's classifier is a trained {trained_as}, "
            f"deeplab.backbone is {cfg.deeplab.backbone}; retrain the classifier or change the setting"
        )
    source = list(classifier.features.state_dict().items())
    target = model.backbone.state_dict()
    if len(source) < len(target):
        raise ValueError(
            f"deeplab.backbone_from_classifier: the classifier's backbone has {len(source)} tensors, DeepLab's "
            f"{len(target)}"
        )
    weights = {}
    for (name, tensor), (own, own_tensor) in zip(source, target.items()):
        if name.rsplit(".", 1)[-1] != own.rsplit(".", 1)[-1] or tensor.shape != own_tensor.shape:
            raise ValueError(
                f"deeplab.backbone_from_classifier: the classifier's {name} {tuple(tensor.shape)} does not "
                f"fit DeepLab's {own} {tuple(own_tensor.shape)}"
            )
        weights[own] = tensor
    model.backbone.load_state_dict(weights)
    return f"the backbone of TRAIN_SEED's classifier ({len(weights)} tensors)"


def make_optimizer(model, settings):
    """SGD with the head at ``head_lr_mult`` x the backbone's rate, and the poly schedule."""
    head = list(model.head.parameters())
    head_ids = {id(p) for p in head}
    optimizer = torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if id(p) not in head_ids], "lr": settings.lr},
            {"params": head, "lr": settings.lr * settings.head_lr_mult},
        ],
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    return optimizer, training.poly_schedule(optimizer, settings.steps, settings.poly_power)


def pixel_loss(network, batch, device, ignore_hardest: float = 0.0) -> torch.Tensor:
    """Cross-entropy summed over labelled pixels / the labelled pixels of the whole global batch:
    a crop of nothing but ignore gives 0, not NaN, and under several processes the gradients DDP
    averages equal one process's on the same global batch. ``ignore_hardest``: that fraction of
    this process's labelled pixels, those with the highest loss, counts neither in the sum nor in
    the count; each process picks them in its own part of the batch, so with it the result depends
    on the number of processes."""
    images, labels = batch
    labels = runtime.to_device(labels, device)
    logits = network(runtime.to_device(images, device))
    labelled_pixels = labels != IGNORE
    labelled = labelled_pixels.sum().float()
    dropped = int(labelled.item() * ignore_hardest) if ignore_hardest > 0 else 0  # .item() waits for the GPU
    if dropped:
        losses = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none")[labelled_pixels]
        total = torch.topk(losses, losses.numel() - dropped, largest=False, sorted=False).values.sum()
        labelled = labelled - dropped
    else:
        total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    world = distributed.world_size()
    if world > 1:  # DDP averages over ranks: normalise by the global count, times the world
        labelled = distributed.all_reduce_sum_(labelled.clone()) / world
    return total / labelled.clamp(min=1)


def ignore_hardest_at(settings, step: int) -> float:
    """The fraction of hardest pixels ignored at ``step``: 0 at the start, ``ignore_hardest`` from
    ``ignore_hardest_warmup`` of the steps on (a network that has learnt nothing yet cannot tell a
    wrong label from a hard one)."""
    ramp = settings.ignore_hardest_warmup * settings.steps
    return settings.ignore_hardest * (1.0 if ramp <= 0 else min(1.0, step / ramp))


def run(cfg, *, stop_after: int | None = None) -> dict:
    """Train (or resume) DeepLab; returns {"val_mIoU", "steps", "gt_images", "pseudo_images",
    "weakly_supervised"}. ``stop_after``: stop once this many steps are done, as an interruption
    would (last checkpoint saved); the next run resumes."""
    settings = cfg.deeplab
    if settings.batch_size < 2:
        raise ValueError(
            "deeplab.batch_size must be at least 2: the ASPP image-pooling branch has a "
            "BatchNorm over a 1x1 map, which needs two samples to train"
        )
    device = runtime.select_device(cfg.runtime.device)
    distributed.init_process_group_if_needed(device)
    device = distributed.device_for_rank(device)
    if settings.batch_size // distributed.world_size() < 2:
        raise ValueError(
            f"deeplab.batch_size {settings.batch_size} over {distributed.world_size()} processes "
            f"leaves fewer than 2 samples per process, which the ASPP image-pooling BatchNorm needs"
        )
    runtime.seed_everything(cfg.runtime.seed)
    layout = Layout(cfg)
    main = distributed.is_main()
    train_set = datasets.build(cfg, "train")
    val_set = datasets.build(cfg, "val")
    sources, report = label_sources(cfg, train_set, layout)
    initial, initial_description = initial_network(cfg, train_set.class_names)
    weakly, reasons = supervision(settings.segmentation_pretrained, len(report["gt_images"]), initial_description)
    report.update(weakly_supervised=weakly, not_weakly_supervised_because=reasons)
    if main:
        board.write_report(cfg, STAGE, "labels", report)
    skipped = report["skipped_without_label"]
    if skipped and main:
        print(
            f"WARNING: {len(skipped)} training images have neither a pseudo label (in "
            f"{report['pseudo_label_folder']}; CREATE_GUIDE writes them) nor a chosen mask and are "
            f"skipped: {', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''} "
            f"(all listed in {layout.run_dir(STAGE) / 'labels.json'})",
            flush=True,
        )
    if not sources:
        raise ValueError(
            f"no training image of {cfg.path(cfg.dataset.root)} has a label: run CREATE_GUIDE "
            f"or raise deeplab.gt_percentage"
        )
    if main:
        print(
            f"DeepLab trains on {len(report['gt_images'])} real masks and {report['pseudo_images']} pseudo labels"
            + ("" if weakly else " -- NOT weakly supervised: " + "; ".join(reasons)),
            flush=True,
        )

    model = build_from_config(cfg, train_set.num_classes + 1)
    if settings.backbone_from_classifier:
        loaded = load_classifier_backbone(cfg, model, train_set.class_names)
        if main:
            print(f"DeepLab starts from {loaded} (deeplab.backbone_from_classifier)", flush=True)
    if initial is not None:
        model.load_state_dict(initial.state_dict())
        if main:
            print(f"DeepLab starts from {initial_description['checkpoint']} (deeplab.init_checkpoint)", flush=True)
    frozen_layers = model.freeze_early_layers(settings.frozen_stride)
    if frozen_layers and main:
        print(
            f"DeepLab keeps the starting weights of {len(frozen_layers)} early backbone layers "
            f"(deeplab.frozen_stride {settings.frozen_stride})",
            flush=True,
        )
    model = model.to(device)
    starts_trained = (
        settings.pretrained_backbone or settings.segmentation_pretrained or starts_from_trained_weights(settings)
    )
    freeze_bn = settings.freeze_backbone_bn and starts_trained
    optimizer, scheduler = make_optimizer(model, settings)
    describe = {
        **model.describe(),
        "class_names": train_set.class_names,
        "gt_percentage": settings.gt_percentage,
        "pretrained_backbone": settings.pretrained_backbone,
        "freeze_backbone_bn": freeze_bn,
        "frozen_stride": settings.frozen_stride,
        "average_decay": settings.average_decay,
        "weakly_supervised": weakly,
        "not_weakly_supervised_because": reasons,
        # only when set, so checkpoints written before the setting existed still resume
        **(
            {
                "init_checkpoint": initial_description["checkpoint"],
                "init_checkpoint_sha1": provenance.file_digest(cfg.path(settings.init_checkpoint)),
            }
            if initial is not None
            else {}
        ),
        **({"backbone_from_classifier": True} if settings.backbone_from_classifier else {}),
    }
    summary = {
        "gt_images": len(report["gt_images"]),
        "pseudo_images": report["pseudo_images"],
        "weakly_supervised": weakly,
    }
    samples = SegmentationSamples(
        train_set,
        sources,
        crop_size=settings.crop_size,
        scale_min=settings.scale_min,
        scale_max=settings.scale_max,
        mean=model.mean,
        std=model.std,
        seed=cfg.runtime.seed,
    )
    val_ids = [i for i in val_set.ids if val_set.has_mask(i)]
    writer = board.open_writer(cfg, STAGE, fresh=training.starts_fresh(cfg, CHECKPOINTS)) if main else None
    if writer is not None:
        for reason in reasons:
            writer.add_text("warning", reason, 0)
    precision = cfg.runtime.precision

    def validate(net, step: int, log) -> dict:
        with runtime.autocast(device, precision):
            result = _validate(net, val_set, val_ids, settings.batch_size)
        if val_ids:
            log.add_scalar("val/mIoU", result["mIoU"], step)
            log.add_scalar("val/pixel_accuracy", result["pixel_accuracy"], step)
            print(f"step {step}: val mIoU {result['mIoU']:.3f}", flush=True)
        return result

    def train_mode(net) -> None:
        net.train()
        net.freeze_backbone_batchnorm(freeze_bn)

    spec = training.TrainingSpec(
        stage=STAGE,
        checkpoints=CHECKPOINTS,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        steps=settings.steps,
        val_every=settings.val_every,
        batch_size=settings.batch_size,
        samples=samples,
        # the scheduler steps once per training step and is restored on resume: it knows the step
        loss=lambda network, batch, device: pixel_loss(
            network, batch, device, ignore_hardest_at(settings, scheduler.last_epoch)
        ),
        metric="mIoU",
        describe=describe,
        resume_keys=RESUME_KEYS,
        validate=validate,
        train_mode=train_mode,
        writer=writer,
        memory_format=cfg.runtime.memory_format,
        average_decay=settings.average_decay,
    )
    try:
        outcome = training.fit(cfg, spec, device=device, stop_after=stop_after)
    finally:
        if writer is not None:
            writer.close()
    best = outcome.best
    if not outcome.trained:
        print(f"DeepLab already trained for {outcome.step} steps; best val mIoU {best['mIoU']:.3f}")
    return {**summary, "val_mIoU": _finite(best["mIoU"]), "steps": outcome.step}


def _finite(value: float) -> float:
    return float("nan") if value == float("-inf") else value


def _validate(model, val_set, val_ids: list[str], batch_size: int) -> dict:
    if not val_ids:
        return {"mIoU": float("nan")}
    progress = tqdm(total=len(val_ids), desc="val", leave=False)
    matrix = evaluate(model, val_set, val_ids, batch_size=batch_size, progress=progress)
    progress.close()
    return {"mIoU": matrix.mean_iou(), "pixel_accuracy": matrix.pixel_accuracy()}
