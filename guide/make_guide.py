"""CREATE_GUIDE: pseudo labels from saliency maps and class regions (the rules are in guide/rules.py).

Per image the stage reads, through the tmp/ layout, the saliency probability, the binary mask and
the raw CAM of every ground-truth class, and writes a VOC-palette PNG (0 background, 1..C classes,
255 ignore). Images are spread over a pool of ``guide.workers`` processes; images already done are
skipped on a rerun unless ``runtime.overwrite``. Where ground truth exists the stage scores every
requested pseudo label, also ones from earlier runs (read back from disk, so a rerun reports the
same numbers): mIoU, per-class precision and recall, and the fraction of pixels left as ignore.
With ``guide.split = "clusters"`` a first pass, before the pool, fits the k-means models that
split shared regions (guide/clusters.py), reading TRAIN_SEED's network.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import as_completed

import numpy as np
from tqdm import tqdm

import datasets
from common import board, distributed, files, metrics, pool, work
from common.errors import InputError
from common.layout import Layout
from guide import clusters
from guide.rules import IGNORE, GuideParams, make_pseudo_label

STAGE = "create_guide"
SUMMARY_KEYS = ("mIoU", "precision", "recall", "ignore_fraction")


def missing_input(path, stage: str) -> FileNotFoundError:
    """The error for an input file that an earlier stage should have written."""
    return FileNotFoundError(
        f"{path} is missing: it is made by {stage} (python main.py --stages {stage.lower()}); or check paths.tmp"
    )


def read_inputs(layout: Layout, image_set, image_id: str, saliency: np.ndarray | None = None) -> dict:
    """The arguments of :func:`make_pseudo_label` for one image, from its files in tmp/.

    Class masks and CAMs are read for the image's ground-truth classes; an image without labels has
    none (and needs no CAM file). ``saliency`` replaces the stored map when given (comparisons)."""
    image = image_set.image(image_id)
    saliency_path = layout.saliency_prob(image_id)
    if saliency is None:
        if not saliency_path.exists():
            raise missing_input(saliency_path, "CREATE_SALIENCY")
        saliency = layout.read_saliency(image_id)
    if saliency.shape != image.shape[:2]:
        raise InputError(
            f"{saliency_path} is {saliency.shape}, the image {image_id} is {image.shape[:2]}: "
            "recompute it (CREATE_SALIENCY with runtime.overwrite=true)"
        )
    class_ids = image_set.class_ids(image_id)
    class_masks: dict[int, np.ndarray] = {}
    cams: dict[int, np.ndarray] = {}
    if class_ids:
        cam_path = layout.cams(image_id)
        if not cam_path.exists():
            raise missing_input(cam_path, "CREATE_ATTENTION")
        class_cams = layout.read_cams(image_id)
        stored = class_cams.class_ids.tolist()
        if tuple(class_cams.image_size) != saliency.shape or not set(class_ids) <= set(stored):
            raise InputError(
                f"{cam_path} holds classes {stored} for a {class_cams.image_size} image; "
                f"image {image_id} is {saliency.shape} with classes {class_ids}: recompute it "
                "(CREATE_ATTENTION with runtime.overwrite=true)"
            )
        upsampled = class_cams.upsampled()
        for class_id in class_ids:
            mask_path = layout.cam_mask(image_id, class_id)
            if not mask_path.exists():
                raise missing_input(mask_path, "CREATE_ATTENTION")
            class_masks[class_id] = layout.read_cam_mask(image_id, class_id)
            if class_masks[class_id].shape != saliency.shape:
                raise InputError(f"{mask_path} is {class_masks[class_id].shape}, the image {saliency.shape}")
            cams[class_id] = upsampled[stored.index(class_id)]
    return {"image": image, "saliency_prob": saliency, "class_masks": class_masks, "cams": cams}


# ---- worker pool: module-level state set once per process, so _label_one pickles only an id
_state: dict = {}


def _init_worker(cfg, split: str, params: GuideParams, cluster_models: dict | None = None) -> None:
    image_set = datasets.build(cfg, split)
    shared_region_split = None
    if cluster_models is not None:
        shared_region_split = clusters.ClusterSplit(cfg, image_set.class_names, cluster_models)
    _state.update(layout=Layout(cfg), image_set=image_set, params=params, split=shared_region_split)


def _label_one(image_id: str) -> tuple[str, np.ndarray]:
    inputs = read_inputs(_state["layout"], _state["image_set"], image_id)
    return image_id, make_pseudo_label(**inputs, params=_state["params"], split=_state["split"])


def compute_pseudo_labels(
    cfg, split: str, ids: list[str], params: GuideParams, workers: int, cluster_models: dict | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """``(id, pseudo label)`` for every id of ``split``, in completion order, from a pool of
    ``workers`` processes (in this process when 1). ``cluster_models``: those of
    :func:`fit_cluster_models` (guide.split clusters), else shared regions go to the dense CRF.
    Nothing is written; see :func:`run`."""
    if not ids:
        return
    if workers <= 1 or len(ids) == 1:
        _init_worker(cfg, split, params, cluster_models)
        for image_id in ids:
            yield _label_one(image_id)
        return
    executor = pool.executor(
        min(workers, len(ids)), initializer=_init_worker, initargs=(cfg, split, params, cluster_models)
    )
    try:
        futures = [executor.submit(_label_one, image_id) for image_id in ids]
        for future in as_completed(futures):
            yield future.result()
    finally:
        # on an error (or a consumer that stops early) drop the queued images, keep nothing waiting
        executor.shutdown(wait=True, cancel_futures=True)


def write_pseudo_labels(
    cfg, split: str, ids: list[str], params: GuideParams, workers: int, cluster_models: dict | None = None
) -> None:
    """Compute and store (atomically, through the layout) the pseudo labels of ``ids``."""
    layout = Layout(cfg)
    labels = compute_pseudo_labels(cfg, split, ids, params, workers, cluster_models)
    for image_id, label in tqdm(labels, total=len(ids), desc=f"guide {split}"):
        files.write_label_png(layout.pseudo_label(image_id), label)


def fit_cluster_models(cfg, image_set, params: GuideParams) -> dict:
    """guide.split clusters: the k-means models of ``image_set``'s shared regions (guide/clusters.py),
    fitted by rank 0 and kept in tmp/guide (refitted under runtime.overwrite), so every process and
    every resumed run labels with the same models."""
    layout = Layout(cfg)
    path = layout.cluster_models(image_set.split)
    if distributed.is_main() and (cfg.runtime.overwrite or not path.exists()):
        models = clusters.gather_and_fit(cfg, image_set, lambda i: read_inputs(layout, image_set, i), params)
        clusters.save_namers(path, models)
        print(
            f"{image_set.split}: shared regions split by clusters of {len(models)} class sets (models kept in {path})"
        )
    distributed.barrier()
    return clusters.load_namers(path)


# ---- scoring and pictures
class Scores:
    """Pseudo labels against ground truth (C+1 classes; pseudo-label 255 counts as a miss), and
    the share of ignore pixels over every pseudo label, with or without ground truth."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = ["background"] + list(class_names)
        self.matrix = metrics.ConfusionMatrix(len(self.class_names))
        self.ignored = self.pixels = self.images = self.scored = 0

    def update(self, label: np.ndarray, truth: np.ndarray | None) -> None:
        self.ignored += int(np.count_nonzero(label == IGNORE))
        self.pixels += label.size
        self.images += 1
        if truth is not None:
            if truth.shape != label.shape:
                raise InputError(f"ground truth {truth.shape} and pseudo label {label.shape} differ in size")
            self.matrix.update(truth, label)
            self.scored += 1

    def merge(self, other: Scores) -> None:
        self.matrix.merge(other.matrix)
        self.ignored += other.ignored
        self.pixels += other.pixels
        self.images += other.images
        self.scored += other.scored

    def result(self) -> dict:
        nan = float("nan")
        summary = {
            "mIoU": nan,
            "precision": nan,
            "recall": nan,
            "ignore_fraction": self.ignored / self.pixels if self.pixels else nan,
            "images": self.images,
            "images_with_masks": self.scored,
        }
        if self.scored:
            precision, recall, iou = self.matrix.precision(), self.matrix.recall(), self.matrix.iou()
            summary.update(
                mIoU=self.matrix.mean_iou(),
                precision=_nanmean(precision),
                recall=_nanmean(recall),
                pixel_accuracy=self.matrix.pixel_accuracy(),
                per_class={
                    name: {"IoU": float(i), "precision": float(p), "recall": float(r)}
                    for name, i, p, r in zip(self.class_names, iou, precision, recall)
                },
            )
        return summary


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")


def score_split(layout: Layout, image_set, ids: list[str]) -> Scores:
    """Scores of the stored pseudo labels of ``ids``."""
    scores = Scores(image_set.class_names)
    for image_id in tqdm(ids, desc=f"score {image_set.split}", leave=False):
        path = layout.pseudo_label(image_id)
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing after CREATE_GUIDE ran")
        scores.update(files.read_label_png(path), image_set.mask(image_id))
    return scores


def class_table(result: dict) -> str:
    """Per-class IoU / precision / recall as a small text table."""
    lines = [f"{'class':16s} {'IoU':>6s} {'prec':>6s} {'recall':>6s}"]
    lines += [
        f"{name:16s} {v['IoU']:6.3f} {v['precision']:6.3f} {v['recall']:6.3f}"
        for name, v in result.get("per_class", {}).items()
    ]
    return "\n".join(lines)


def preview(layout: Layout, image_set, image_id: str) -> np.ndarray:
    """image | saliency | CAMs (each pixel in the colour of its strongest class) | guide | ground truth."""
    image = image_set.image(image_id)
    saliency = np.repeat(np.round(layout.read_saliency(image_id) * 255).astype(np.uint8)[..., None], 3, 2)
    heat = np.zeros(image.shape[:2], np.float32)
    colour = np.zeros_like(image)
    if image_set.class_ids(image_id) and layout.cams(image_id).exists():
        class_cams = layout.read_cams(image_id)
        maps = class_cams.upsampled()
        if len(maps):
            heat = maps.max(0)
            colour = files.voc_palette()[class_cams.class_ids.astype(np.uint8)[maps.argmax(0)]]
    cams = (heat[..., None] * colour + (1 - heat[..., None]) * image * 0.5).astype(np.uint8)
    guide = files.colorize(files.read_label_png(layout.pseudo_label(image_id)))
    truth = image_set.mask(image_id)
    truth = files.colorize(truth) if truth is not None else np.full_like(image, 96)
    return np.concatenate([image, saliency, cams, guide, truth], axis=1)


def run(cfg) -> dict:
    """Pseudo labels for the images of ``guide.splits``; returns their scores over all splits:
    {"mIoU", "precision", "recall" (means over classes), "ignore_fraction", "images", ...}.

    Under torchrun each process labels and scores its share of the ids; once all are done, rank 0
    merges the (integer) scores, so they equal one process's, and alone writes reports, previews
    and tensorboard. Every rank returns the same summary."""
    layout = Layout(cfg)
    work.begin_stage(None, [layout.folder("guide"), layout.run_dir(STAGE)])
    params = GuideParams.from_config(cfg)
    image_sets = {split: datasets.build(cfg, split) for split in cfg.guide.splits}
    # all labelling happens before the tensorboard writer (and its thread) exists
    for split, image_set in image_sets.items():

        def done(image_id: str) -> bool:
            return layout.pseudo_label(image_id).exists()

        todo = work.pending(work.shard(image_set.ids), done, cfg.runtime.overwrite)
        print(
            f"{split}: {len(image_set) - len(todo)} pseudo labels done before or by other processes, "
            f"{len(todo)} to do here (rule {params.rule}, shared regions split by {cfg.guide.split}, "
            f"{cfg.guide.workers} workers)"
        )
        cluster_models = None
        # every process decides alike (the whole split, not its shard), as fitting waits for all
        if cfg.guide.split == "clusters" and work.pending(image_set.ids, done, cfg.runtime.overwrite):
            cluster_models = fit_cluster_models(cfg, image_set, params)
        write_pseudo_labels(cfg, split, todo, params, cfg.guide.workers, cluster_models)
    split_scores = {
        split: merged_scores(score_split(layout, image_set, work.shard(image_set.ids)))
        for split, image_set in image_sets.items()
    }
    distributed.barrier()  # every pseudo label of every process is on disk (for the previews)

    total = Scores(next(iter(image_sets.values())).class_names if image_sets else [])
    for scores in split_scores.values():
        total.merge(scores)
    if distributed.is_main():
        _report(cfg, image_sets, split_scores)
    distributed.barrier()  # reports written before any process moves on
    result = total.result()
    return {key: result[key] for key in (*SUMMARY_KEYS, "images", "images_with_masks")}


def merged_scores(scores: Scores) -> Scores:
    """Every process's :class:`Scores` summed (integer counts: exact in any order); on every rank."""
    gathered = distributed.all_gather_object(scores)
    merged = Scores(scores.class_names[1:])
    for part in gathered:
        merged.merge(part)
    return merged


def _report(cfg, image_sets: dict, split_scores: dict[str, Scores]) -> None:
    """Rank 0: previews, tensorboard, printed tables and the JSON report of each split."""
    layout = Layout(cfg)
    writer = board.open_writer(cfg, STAGE)
    for split, image_set in image_sets.items():
        for image_id in image_set.ids[: max(0, cfg.guide.previews)]:
            picture = preview(layout, image_set, image_id)
            files.write_rgb(layout.guide_preview(image_id), picture)
            writer.add_image(f"{split}/{image_id}", picture, 0, dataformats="HWC")
        result = split_scores[split].result()
        for key in (*SUMMARY_KEYS, "pixel_accuracy"):
            if key in result and not math.isnan(result[key]):
                writer.add_scalar(f"{split}/{key}", result[key], 0)
        for name, values in result.get("per_class", {}).items():
            for key, value in values.items():
                if not math.isnan(value):
                    writer.add_scalar(f"{split}/{key}/{name}", value, 0)
        if result["images_with_masks"]:
            print(class_table(result))
            print(
                f"{split}: pseudo-label mIoU {result['mIoU']:.3f}, precision {result['precision']:.3f}, "
                f"recall {result['recall']:.3f} over {result['images_with_masks']} images with masks"
            )
        print(
            f"{split}: {100 * result['ignore_fraction']:.1f}% of pseudo-label pixels are ignore "
            f"({result['images']} images)"
        )
        board.write_report(cfg, STAGE, f"pseudo_labels_{split}", result)
    writer.close()
