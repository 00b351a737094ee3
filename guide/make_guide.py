"""CREATE_GUIDE: pseudo labels from saliency maps and class regions (rules in guide/rules.py).

Reads, through the tmp/ layout, each image's saliency probability, its class masks and its raw
CAMs; writes a VOC-palette PNG per image. Images are spread over a pool of ``guide.workers``
processes; images already done are skipped on a rerun. Where ground truth exists the stage scores
every pseudo label (also ones from earlier runs): mIoU, per-class precision and recall, and the
fraction of pixels left as ignore.
"""
from __future__ import annotations

import multiprocessing as mp

import numpy as np
from tqdm import tqdm

import datasets
from common import board, files, metrics, work
from common.layout import Layout
from guide.rules import GuideParams, make_pseudo_label

STAGE = "create_guide"
_worker: dict = {}


def missing_input_error(path, stage: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path} is missing: run {stage} first (python main.py --stages "
                             f"{stage.lower()}) or check paths.tmp")


def guide_one(cfg, image_set, image_id: str, params: GuideParams) -> np.ndarray:
    """Compute the pseudo label of one image from its files in tmp/."""
    layout = Layout(cfg)
    if not layout.saliency_prob(image_id).exists():
        raise missing_input_error(layout.saliency_prob(image_id), "CREATE_SALIENCY")
    if not layout.cams(image_id).exists():
        raise missing_input_error(layout.cams(image_id), "CREATE_ATTENTION")
    saliency = layout.read_saliency(image_id)
    class_cams = layout.read_cams(image_id)
    if class_cams.image_size != saliency.shape:
        raise ValueError(f"{layout.cams(image_id)} is for a {class_cams.image_size} image, the saliency "
                         f"map {layout.saliency_prob(image_id)} is {saliency.shape}: recompute one of them")
    cams = dict(zip(class_cams.class_ids.tolist(), class_cams.upsampled()))
    masks = {}
    for class_id in cams:
        if not layout.cam_mask(image_id, class_id).exists():
            raise missing_input_error(layout.cam_mask(image_id, class_id), "CREATE_ATTENTION")
        masks[class_id] = layout.read_cam_mask(image_id, class_id)
    return make_pseudo_label(image_set.image(image_id), saliency, masks, cams, params)


def _init_worker(cfg, split: str) -> None:
    _worker.update(cfg=cfg, image_set=datasets.build(cfg, split), params=GuideParams.from_config(cfg))


def _work(image_id: str) -> str:
    label = guide_one(_worker["cfg"], _worker["image_set"], image_id, _worker["params"])
    files.write_label_png(Layout(_worker["cfg"]).pseudo_label(image_id), label)
    return image_id


def write_pseudo_labels(cfg, split: str, ids: list[str], workers: int) -> None:
    """Compute and store the pseudo labels of ``ids`` with a pool of ``workers`` processes."""
    if workers <= 1 or len(ids) < 2:
        _init_worker(cfg, split)
        for image_id in tqdm(ids, desc=f"guide {split}"):
            _work(image_id)
        return
    # spawn, never fork: a child forked from a process whose OpenMP threads have run hangs
    context = mp.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(cfg, split)) as pool:
        for _ in tqdm(pool.imap_unordered(_work, ids, chunksize=4), total=len(ids), desc=f"guide {split}"):
            pass


def preview(cfg, image_set, image_id: str) -> np.ndarray:
    """image | saliency | CAMs (strongest class) | pseudo label | ground truth."""
    layout = Layout(cfg)
    image = image_set.image(image_id)
    saliency = np.repeat((layout.read_saliency(image_id) * 255).astype(np.uint8)[..., None], 3, 2)
    cams = layout.read_cams(image_id).upsampled()
    heat = cams.max(0) if len(cams) else np.zeros(image.shape[:2], np.float32)
    heat = (heat[..., None] * np.array([255, 60, 0]) + (1 - heat[..., None]) * image * 0.5).astype(np.uint8)
    label = files.colorize(files.read_label_png(layout.pseudo_label(image_id)))
    mask = image_set.mask(image_id)
    truth = files.colorize(mask) if mask is not None else np.zeros_like(image)
    return np.concatenate([image, saliency, heat, label, truth], axis=1)


def score(cfg, image_set) -> dict:
    """Pseudo labels against ground truth, over every image of the split that has both."""
    layout = Layout(cfg)
    matrix = metrics.ConfusionMatrix(image_set.num_classes + 1)
    ignored = total = scored = 0
    for image_id in image_set.ids:
        if not image_set.has_mask(image_id) or not layout.pseudo_label(image_id).exists():
            continue
        pseudo = files.read_label_png(layout.pseudo_label(image_id))
        matrix.update(image_set.mask(image_id), pseudo)
        ignored += int((pseudo == 255).sum())
        total += pseudo.size
        scored += 1
    if not scored:
        return {}
    names = ["background"] + image_set.class_names
    return {"mIoU": matrix.mean_iou(), "precision": float(np.nanmean(matrix.precision())),
            "recall": float(np.nanmean(matrix.recall())), "ignore_fraction": ignored / total,
            "images": scored, "per_class": {n: {"IoU": float(i), "precision": float(p), "recall": float(r)}
                                            for n, i, p, r in zip(names, matrix.iou(), matrix.precision(),
                                                                  matrix.recall())}}


def run(cfg) -> dict:
    layout = Layout(cfg)
    writer = board.open_writer(cfg, STAGE)
    summary: dict = {}
    for split in cfg.guide.splits:
        image_set = datasets.build(cfg, split)
        todo = work.pending(work.shard(image_set.ids), lambda i: layout.pseudo_label(i).exists(),
                            cfg.runtime.overwrite)
        print(f"{split}: {len(image_set) - len(todo)} pseudo labels done before, {len(todo)} to do")
        write_pseudo_labels(cfg, split, todo, cfg.guide.workers)
        for image_id in image_set.ids[:6]:
            picture = preview(cfg, image_set, image_id)
            files.write_rgb(layout.guide_preview(image_id), picture)
            writer.add_image(f"{split}/{image_id}", picture, 0, dataformats="HWC")
        result = score(cfg, image_set)
        if result:
            for key in ("mIoU", "precision", "recall", "ignore_fraction"):
                writer.add_scalar(f"{split}/{key}", result[key], 0)
            lines = [f"{'class':14s} {'IoU':>6s} {'prec':>6s} {'recall':>6s}"]
            lines += [f"{name:14s} {v['IoU']:6.3f} {v['precision']:6.3f} {v['recall']:6.3f}"
                      for name, v in result["per_class"].items()]
            print("\n".join(lines))
            print(f"{split}: pseudo-label mIoU {result['mIoU']:.3f}, precision {result['precision']:.3f}, "
                  f"recall {result['recall']:.3f}, ignore {100 * result['ignore_fraction']:.1f}% of pixels")
            board.write_report(cfg, STAGE, f"pseudo_labels_{split}", result)
        summary[split] = result
    writer.close()
    first = summary.get("train") or next((s for s in summary.values() if s), {})
    return {key: first.get(key, float("nan")) for key in ("mIoU", "precision", "recall", "ignore_fraction")}
