"""CREATE_SALIENCY: foreground probability of every image of the data set's splits.

Images are resized to the network's size (224 for the public checkpoint) in batches; each map goes
back to its image's own size (bilinear) and is stored as an 8-bit probability PNG, so the
binarisation threshold (saliency.threshold) is applied where it is used and can change without
rerunning the network. A 0/255 view at the current threshold (tmp/saliency/binary/), for
inspection only, is written for each new map, and for every map when the threshold changed.

Under torchrun every process takes its share of fixed batches (common/work.py), so each map is
the same bytes whatever the number of processes or the images done before; rank 0 alone scores
and writes tensorboard, once every process has finished.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import datasets
from common import board, distributed, files, metrics, runtime, work
from common.layout import Layout
from saliency.data import image_tensor, resize
from saliency.picanet import PiCANet, load_picanet

STAGE = "create_saliency"
SPLITS = ("train", "val")


def network_path(cfg):
    """The PiCANet file CREATE_SALIENCY will use, or None."""
    if cfg.saliency.checkpoint:
        return cfg.path(cfg.saliency.checkpoint)
    return Layout(cfg).trained_network("saliency")


def preflight(cfg, stages: list[str]) -> None:
    """Fail before any stage runs when there is no saliency network and none will be trained."""
    if "train_saliency" not in stages and network_path(cfg) is None:
        raise FileNotFoundError(
            "CREATE_SALIENCY needs a saliency network and none is configured or trained: set "
            "saliency.checkpoint to the public PiCANet checkpoint (<N>epo_<M>step.ckpt, encoder vgg16), "
            "or switch TRAIN_SALIENCY on (python main.py --stages train_saliency,create_saliency); "
            f"trained networks are looked for in {Layout(cfg).checkpoint('saliency').parent}"
        )


def load_network(cfg, device) -> PiCANet:
    path = network_path(cfg)
    if path is None:
        preflight(cfg, [])
    model = load_picanet(
        path, encoder=cfg.saliency.encoder, paper_attention=cfg.saliency.paper_attention, map_location=device
    )
    return runtime.to_memory_format(model.to(device), cfg.runtime.memory_format)


class _Batches(Dataset):
    """The fixed batches of :func:`common.work.fixed_batches`, decoded and resized in loader workers
    to each of ``sides`` (one batch per network input side)."""

    def __init__(self, image_set, batches: list[list[str]], sides: list[int]) -> None:
        self.image_set, self.batches, self.sides = image_set, batches, sides

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int):
        ids = self.batches[index]
        images = [image_tensor(self.image_set.image(i)) for i in ids]
        resized = [torch.stack([resize(image, (side, side)) for image in images]) for side in self.sides]
        return ids, resized, [tuple(image.shape[1:]) for image in images]


# every PiCANet encoder halves its input to a 1/16 map at most (vgg16 1/8, lite0 1/16): a side that
# is a multiple of this keeps the decoder's upsampled maps the size of the encoder's
SIDE_MULTIPLE = 16


def input_sides(settings) -> list[int]:
    """The network input sides CREATE_SALIENCY runs at: ``input_size`` times each of ``scales``,
    other scales than 1 rounded to a multiple of :data:`SIDE_MULTIPLE`."""
    return [
        settings.input_size
        if scale == 1.0
        else max(SIDE_MULTIPLE, SIDE_MULTIPLE * round(settings.input_size * scale / SIDE_MULTIPLE))
        for scale in settings.scales
    ]


def saliency_maps(
    model: PiCANet, images: torch.Tensor | list[torch.Tensor], sizes, minmax: bool, precision: str = "fp32"
) -> list[np.ndarray]:
    """Probabilities at each image's own size from a batch resized to the network's size, or from
    one such batch per input side fused by their pixelwise maximum (foreground at any side is
    foreground); the network runs at ``precision`` (runtime.precision), everything after it in float32."""
    batches = [images] if torch.is_tensor(images) else list(images)
    passes = []
    for batch in batches:
        with torch.no_grad(), runtime.autocast(batch.device, precision):
            passes.append(model(model.prepare(batch))[-1].float())
    maps = []
    for index, size in enumerate(sizes):
        full = torch.stack(
            [
                F.interpolate(probs[index][None], size=size, mode="bilinear", align_corners=False)[0, 0]
                for probs in passes
            ]
        ).amax(0)
        if minmax:  # optional: stretches every map to [0, 1], inventing foreground where there is none
            full = (full - full.min()) / (full.max() - full.min()).clamp_min(1e-8)
        maps.append(full.clamp(0, 1).cpu().numpy())
    return maps


def views_threshold(cfg) -> float | None:
    """The threshold of the binary views on disk, once all of them were written at it; None if
    unknown (never written, or a rewrite at another threshold did not finish)."""
    try:
        return float(Layout(cfg).saliency_binary_threshold().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_binary_views(cfg, ids, new_maps=frozenset()) -> None:
    """0/255 views of the stored maps at the current saliency.threshold: of ``new_maps`` and of
    those without a view, or of all ``ids`` when the views on disk are at another threshold."""
    layout = Layout(cfg)
    rewrite_all = views_threshold(cfg) != cfg.saliency.threshold
    if rewrite_all:
        # forgotten before any view changes: a kill halfway must not leave views of two thresholds
        # under a file naming one of them
        layout.saliency_binary_threshold().unlink(missing_ok=True)
    for image_id in ids:
        path = layout.saliency_binary(image_id)
        if not layout.saliency_prob(image_id).exists():
            continue
        if rewrite_all or image_id in new_maps or not path.exists():
            view = layout.read_saliency(image_id) >= cfg.saliency.threshold
            files.write_gray_png(path, np.where(view, 255, 0))


def run(cfg) -> dict:
    """Saliency maps of every image of both splits; this process writes its share of the fixed
    batches (torchrun), rank 0 then scores every map and writes the previews and tensorboard."""
    settings = cfg.saliency
    device = distributed.device_for_rank(runtime.select_device(cfg.runtime.device))
    layout = Layout(cfg)
    work.begin_stage(device, [layout.folder("saliency"), layout.run_dir(STAGE)])
    model = load_network(cfg, device)
    image_sets = [datasets.build(cfg, split) for split in SPLITS]

    def done(image_id: str) -> bool:
        return layout.saliency_prob(image_id).exists()

    for image_set in image_sets:
        batches = work.fixed_batches(image_set.ids, settings.batch_size)
        mine = work.my_batches(batches, done, cfg.runtime.overwrite)
        todo = set(work.pending([i for batch in mine for i in batch], done, cfg.runtime.overwrite))
        print(
            f"{image_set.split}: {len(image_set) - len(todo)} saliency maps done before or by other "
            f"processes, {len(todo)} to do here"
        )
        loader = DataLoader(
            _Batches(image_set, mine, input_sides(settings)),
            batch_size=None,
            num_workers=cfg.runtime.num_workers,
            pin_memory=device.type == "cuda",
        )
        for ids, images, sizes in tqdm(loader, desc=f"saliency {image_set.split}"):
            maps = saliency_maps(
                model,
                [runtime.to_device(batch, device) for batch in images],
                sizes,
                settings.minmax_normalise,
                cfg.runtime.precision,
            )
            # a batch is recomputed whole, but maps finished before are left as they are
            for image_id, prob in zip(ids, maps):
                if image_id in todo:
                    layout.write_saliency(image_id, prob)
        write_binary_views(cfg, [i for batch in work.shard(batches) for i in batch], todo)
    distributed.barrier()  # every map and view of every process is on disk
    if distributed.is_main():
        files.write_text(layout.saliency_binary_threshold(), repr(float(settings.threshold)))

    summary: dict = {"images": sum(len(image_set) for image_set in image_sets)}
    if distributed.is_main():
        summary.update(_score_and_show(cfg, image_sets))
    return distributed.broadcast_object(summary)


def _score_and_show(cfg, image_sets) -> dict:
    """Rank 0, once every map exists: tensorboard pictures and the indicative scores, read back
    from disk in id order so they are the same whatever the number of processes."""
    layout = Layout(cfg)
    writer = board.open_writer(cfg, STAGE)
    scores = metrics.SaliencyScores()
    for image_set in image_sets:
        for image_id in image_set.ids[:4]:
            prob = layout.read_saliency(image_id)
            picture = np.concatenate(
                [image_set.image(image_id), np.repeat((prob * 255).astype(np.uint8)[..., None], 3, 2)], axis=1
            )
            writer.add_image(f"{image_set.split}/{image_id}", picture, 0, dataformats="HWC")
        # indicative only: class masks leave out salient objects of no class of interest
        for image_id in image_set.ids:
            if image_set.has_mask(image_id):
                mask = image_set.mask(image_id)
                scores.update(layout.read_saliency(image_id), ((mask > 0) & (mask < 255)).astype(np.uint8))
    writer.close()
    if not scores.count:
        return {}
    result = scores.result()
    print(f"saliency vs object masks (indicative): max F {result['max_F']:.3f}, MAE {result['MAE']:.3f}")
    return {"dataset_max_F": result["max_F"], "dataset_MAE": result["MAE"]}
