"""CREATE_ATTENTION: Grad-CAM of every ground-truth class of every image.

Each image is explained at its own size and aspect ratio (optionally at several scales and
flipped, summed). Images of equal size are batched, so one forward serves a whole batch and each
further class costs only a backward through the classifier's head. Per image the stage writes,
through the tmp/ layout, the normalised raw maps (float16, 1/attention.storage_stride of the image
size, class ids inside the file) and one binary mask per class (map >= attention.threshold).
Where masks exist it reports the CAM seed mIoU over a sweep of background thresholds.

Batches are fixed over the whole id list (common/work.py) and shared batch by batch between
torchrun's processes, so every CAM file holds the same bytes whatever the number of processes or
the images done before; each process scores its share, rank 0 sums the confusion matrices and
alone writes reports, pictures and tensorboard.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import datasets
from attention.gradcam import GradCam, normalise_maps
from classifier import load_trained
from classifier.data import to_tensor
from common import board, distributed, metrics, runtime, work
from common.layout import Layout

STAGE = "create_attention"


def same_size_batches(image_set, ids: list[str], batch_size: int) -> list[list[str]]:
    """Ids grouped by image size (no padding, no resizing), in chunks of ``batch_size``; the same
    batches for the same ids in every run (see :func:`common.work.fixed_batches`)."""
    return work.fixed_batches(ids, batch_size, group=image_set.image_size)


class _Batches(Dataset):
    """Decoded, normalised batches of equal-size images (decoding runs in loader workers)."""

    def __init__(self, image_set, batches: list[list[str]], mean, std) -> None:
        self.image_set, self.batches, self.mean, self.std = image_set, batches, mean, std

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        ids = self.batches[index]
        images = torch.stack([to_tensor(self.image_set.image(i), self.mean, self.std) for i in ids])
        return ids, images


def storage_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    return (-(-image_size[0] // stride), -(-image_size[1] // stride))


def compute_cams(
    grad_cam: GradCam,
    images: torch.Tensor,
    classes: list[list[int]],
    scales: list[float],
    flip: bool,
    out_size: tuple[int, int],
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """Normalised maps (K_b, *out_size) per image: Grad-CAM summed over scales (and flips),
    each pass resized bilinearly to ``out_size``, then divided by its maximum.

    The classifier runs at ``precision`` (runtime.precision); Grad-CAM itself (gradients times
    activations) and everything after it is computed in float32."""
    totals = [images.new_zeros((len(c), *out_size), dtype=torch.float32) for c in classes]
    height, width = images.shape[2:]
    for scale in scales:
        scaled = (
            images
            if scale == 1.0
            else F.interpolate(
                images,
                size=(max(1, round(height * scale)), max(1, round(width * scale))),
                mode="bilinear",
                align_corners=False,
            )
        )
        for flipped in (False, True) if flip else (False,):
            batch = scaled.flip(-1) if flipped else scaled
            with runtime.autocast(images.device, precision):
                passes = grad_cam(batch, classes)
            for index, maps in enumerate(passes):
                if maps.shape[0] == 0:
                    continue
                maps = maps.flip(-1) if flipped else maps
                totals[index] += F.interpolate(maps[None].float(), size=out_size, mode="bilinear", align_corners=False)[
                    0
                ]
    return [normalise_maps(total) for total in totals]


def seed_label(cams, background: float) -> np.ndarray:
    """CAM seed: argmax over [background threshold, class maps], as class ids."""
    upsampled = cams.upsampled()
    if len(cams.class_ids) == 0:
        return np.zeros(cams.image_size, dtype=np.uint8)
    stacked = np.concatenate([np.full((1, *cams.image_size), background, np.float32), upsampled])
    ids = np.concatenate([[0], cams.class_ids]).astype(np.uint8)
    return ids[stacked.argmax(0)]


def seed_matrices(cfg, image_set, layout: Layout, ids: list[str]) -> tuple[list, int]:
    """Confusion matrices of the CAM seeds of ``ids`` (those with masks and CAMs), one per
    background threshold of the sweep, and the number of images scored."""
    thresholds = cfg.attention.seed_thresholds
    matrices = [metrics.ConfusionMatrix(image_set.num_classes + 1) for _ in thresholds]
    scored = 0
    for image_id in tqdm(ids, desc=f"seed mIoU {image_set.split}", leave=False):
        if not image_set.has_mask(image_id) or not layout.cams(image_id).exists():
            continue
        truth = image_set.mask(image_id)
        cams = layout.read_cams(image_id)
        for threshold, matrix in zip(thresholds, matrices):
            matrix.update(truth, seed_label(cams, threshold))
        scored += 1
    return matrices, scored


def seed_result(cfg, image_set, matrices: list, scored: int) -> dict:
    """CAM seed mIoU for every background threshold of the sweep, the best one, per-class IoU."""
    thresholds = cfg.attention.seed_thresholds
    if not scored:
        return {}
    per_threshold = {float(t): m.mean_iou() for t, m in zip(thresholds, matrices)}
    best = max(per_threshold, key=per_threshold.get)
    return {
        "seed_mIoU": per_threshold[best],
        "best_threshold": best,
        "per_threshold": per_threshold,
        "images_scored": scored,
        "per_class_IoU": dict(
            zip(["background"] + image_set.class_names, map(float, matrices[thresholds.index(best)].iou()))
        ),
    }


def seed_scores(cfg, image_set, layout: Layout) -> dict:
    """CAM seed mIoU over every image of the split, in this process (see :func:`seed_result`)."""
    return seed_result(cfg, image_set, *seed_matrices(cfg, image_set, layout, image_set.ids))


def merged_seed_scores(cfg, image_set, layout: Layout, ids: list[str]) -> dict:
    """:func:`seed_scores` with each process scoring ``ids`` (its share): the integer confusion
    matrices are summed over processes, so the result equals one process's exactly. Every rank
    gets it."""
    matrices, scored = seed_matrices(cfg, image_set, layout, ids)
    gathered = distributed.all_gather_object((matrices, scored))
    total = [metrics.ConfusionMatrix(image_set.num_classes + 1) for _ in matrices]
    for rank_matrices, _ in gathered:
        for matrix, part in zip(total, rank_matrices):
            matrix.merge(part)
    return seed_result(cfg, image_set, total, sum(rank_scored for _, rank_scored in gathered))


def _cam_picture(image: np.ndarray, cams) -> np.ndarray:
    """Image beside each class map drawn as a heat overlay, for tensorboard."""
    panels = [image]
    for heat in cams.upsampled():
        red = heat[..., None] * np.array([255, 40, 0]) + (1 - heat[..., None]) * image * 0.6
        panels.append(red.clip(0, 255).astype(np.uint8))
    return np.concatenate(panels, axis=1)


def run(cfg) -> dict:
    """CAMs and class masks of every image of ``attention.splits``; this process writes its share
    of the fixed batches (torchrun); after every process is done, rank 0 writes the seed reports,
    pictures and tensorboard. Every rank returns the same summary."""
    settings = cfg.attention
    device = distributed.device_for_rank(runtime.select_device(cfg.runtime.device))
    layout = Layout(cfg)
    work.begin_stage(device, [layout.folder("attention"), layout.run_dir(STAGE)])
    image_sets = {split: datasets.build(cfg, split) for split in settings.splits}
    model = None
    shares: dict[str, list[str]] = {}
    for split, image_set in image_sets.items():
        if model is None:
            model = load_trained(cfg, image_set.class_names, device)
        target = settings.target_layer or model.default_target_layer

        def done(image_id: str, image_set=image_set) -> bool:
            return layout.cams(image_id).exists() and all(
                layout.cam_mask(image_id, c).exists() for c in image_set.class_ids(image_id)
            )

        batches = same_size_batches(image_set, image_set.ids, settings.batch_size)
        shares[split] = [i for batch in work.shard(batches) for i in batch]
        mine = work.my_batches(batches, done, cfg.runtime.overwrite)
        todo = set(work.pending([i for batch in mine for i in batch], done, cfg.runtime.overwrite))
        print(f"{split}: {len(image_set) - len(todo)} images done before or by other processes, {len(todo)} to do here")
        loader = DataLoader(
            _Batches(image_set, mine, model.mean, model.std),
            batch_size=None,
            num_workers=cfg.runtime.num_workers,
            pin_memory=device.type == "cuda",
        )
        with GradCam(model, target) as grad_cam, tqdm(total=len(todo), desc=f"attention {split}") as bar:
            for ids, images in loader:
                classes = [[c - 1 for c in image_set.class_ids(i)] for i in ids]
                image_size = tuple(images.shape[2:])
                out_size = storage_size(image_size, settings.storage_stride)
                maps = compute_cams(
                    grad_cam,
                    runtime.to_device(images, device),
                    classes,
                    settings.scales,
                    settings.flip,
                    out_size,
                    cfg.runtime.precision,
                )
                for image_id, image_classes, image_maps in zip(ids, classes, maps):
                    if image_id not in todo:  # its batch is recomputed whole; its files stay as they are
                        continue
                    class_ids = [c + 1 for c in image_classes]
                    layout.write_cams_and_masks(
                        image_id, class_ids, image_maps.cpu().numpy(), image_size, settings.threshold
                    )
                    bar.update(1)
    distributed.barrier()  # every CAM of every process is on disk

    writer = board.open_writer(cfg, STAGE) if distributed.is_main() else None
    summary: dict = {}
    for split, image_set in image_sets.items():
        scores = merged_seed_scores(cfg, image_set, layout, shares[split])
        summary[split] = scores
        if writer is None:
            continue
        for image_id in image_set.ids[:4]:
            if layout.cams(image_id).exists():
                picture = _cam_picture(image_set.image(image_id), layout.read_cams(image_id))
                writer.add_image(f"{split}/{image_id}", picture, 0, dataformats="HWC")
        if scores:
            for threshold, value in scores["per_threshold"].items():
                writer.add_scalar(f"{split}/seed_mIoU_by_threshold", value, int(round(threshold * 100)))
            writer.add_scalar(f"{split}/seed_mIoU", scores["seed_mIoU"], 0)
            print(
                f"{split}: CAM seed mIoU {scores['seed_mIoU']:.3f} at background threshold "
                f"{scores['best_threshold']} ({scores['images_scored']} images)"
            )
            board.write_report(cfg, STAGE, f"seed_{split}", scores)
    if writer is not None:
        writer.close()
    distributed.barrier()  # reports written before any process moves on
    train_scores = summary.get("train") or next((s for s in summary.values() if s), {})
    return {
        "seed_mIoU": train_scores.get("seed_mIoU", float("nan")),
        "best_threshold": train_scores.get("best_threshold"),
        "splits": summary,
    }
