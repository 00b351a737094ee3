"""CREATE_SALIENCY: foreground probability of every image of the data set's splits.

Images are resized to the network's size (224 for the public checkpoint) in batches; each map goes
back to its image's own size (bilinear) and is stored as an 8-bit probability PNG, so the
binarisation threshold (saliency.threshold) is applied where it is used and can change without
rerunning the network. A 0/255 view at the current threshold is rewritten from the stored maps at
the end of every run (tmp/saliency/binary/), for inspection only.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import datasets
from common import board, files, metrics, runtime, work
from common.layout import Layout
from saliency.data import image_tensor, resize
from saliency.picanet import PiCANet, load_picanet

STAGE = "create_saliency"
SPLITS = ("train", "val")


def network_path(cfg):
    """The PiCANet file CREATE_SALIENCY will use, or None."""
    if cfg.saliency.checkpoint:
        return cfg.path(cfg.saliency.checkpoint)
    layout = Layout(cfg)
    for which in ("best", "last"):
        if layout.checkpoint("saliency", which).exists():
            return layout.checkpoint("saliency", which)
    return None


def preflight(cfg, stages: list[str]) -> None:
    """Fail before any stage runs when there is no saliency network and none will be trained."""
    if "train_saliency" not in stages and network_path(cfg) is None:
        raise FileNotFoundError(
            "CREATE_SALIENCY needs a saliency network and none is configured or trained: set "
            "saliency.checkpoint to the public PiCANet checkpoint (<N>epo_<M>step.ckpt, encoder vgg16), "
            "or switch TRAIN_SALIENCY on (python main.py --stages train_saliency,create_saliency); "
            f"trained networks are looked for in {Layout(cfg).checkpoint('saliency').parent}")


def load_network(cfg, device) -> PiCANet:
    path = network_path(cfg)
    if path is None:
        preflight(cfg, [])
    return load_picanet(path, encoder=cfg.saliency.encoder, paper_attention=cfg.saliency.paper_attention,
                        map_location=device).to(device)


class _Images(Dataset):
    def __init__(self, image_set, ids: list[str], size: int) -> None:
        self.image_set, self.ids, self.size = image_set, ids, size

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = image_tensor(self.image_set.image(image_id))
        return image_id, resize(image, (self.size, self.size)), tuple(image.shape[1:])


def _collate(batch):
    return [b[0] for b in batch], torch.stack([b[1] for b in batch]), [b[2] for b in batch]


def saliency_maps(model: PiCANet, images: torch.Tensor, sizes, minmax: bool) -> list[np.ndarray]:
    """Probabilities at each image's own size from a batch resized to the network's size."""
    with torch.no_grad():
        probs = model(model.prepare(images))[-1]
    maps = []
    for prob, size in zip(probs, sizes):
        full = F.interpolate(prob[None], size=size, mode="bilinear", align_corners=False)[0, 0]
        if minmax:  # optional: stretches every map to [0, 1], inventing foreground where there is none
            full = (full - full.min()) / (full.max() - full.min()).clamp_min(1e-8)
        maps.append(full.clamp(0, 1).cpu().numpy())
    return maps


def write_binary_views(cfg, ids) -> None:
    """0/255 views of the stored maps at the current saliency.threshold."""
    layout = Layout(cfg)
    for image_id in ids:
        if layout.saliency_prob(image_id).exists():
            view = layout.read_saliency(image_id) >= cfg.saliency.threshold
            files.write_gray_png(layout.saliency_binary(image_id), np.where(view, 255, 0))


def run(cfg) -> dict:
    settings = cfg.saliency
    device = runtime.select_device(cfg.runtime.device)
    layout = Layout(cfg)
    model = load_network(cfg, device)
    writer = board.open_writer(cfg, STAGE)
    scores = metrics.SaliencyScores()
    total = 0
    for split in SPLITS:
        image_set = datasets.build(cfg, split)
        todo = work.pending(work.shard(image_set.ids), lambda i: layout.saliency_prob(i).exists(),
                            cfg.runtime.overwrite)
        print(f"{split}: {len(image_set) - len(todo)} saliency maps done before, {len(todo)} to do")
        loader = DataLoader(_Images(image_set, todo, settings.input_size), batch_size=settings.batch_size,
                            num_workers=cfg.runtime.num_workers, collate_fn=_collate)
        for ids, images, sizes in tqdm(loader, desc=f"saliency {split}"):
            for image_id, prob in zip(ids, saliency_maps(model, images.to(device), sizes, settings.minmax_normalise)):
                layout.write_saliency(image_id, prob)
        write_binary_views(cfg, image_set.ids)
        for image_id in image_set.ids[:4]:
            prob = layout.read_saliency(image_id)
            picture = np.concatenate([image_set.image(image_id),
                                      np.repeat((prob * 255).astype(np.uint8)[..., None], 3, 2)], axis=1)
            writer.add_image(f"{split}/{image_id}", picture, 0, dataformats="HWC")
        # indicative only: class masks leave out salient objects of no class of interest
        for image_id in image_set.ids:
            if image_set.has_mask(image_id):
                mask = image_set.mask(image_id)
                scores.update(layout.read_saliency(image_id), ((mask > 0) & (mask < 255)).astype(np.uint8))
        total += len(image_set)
    writer.close()
    summary = {"images": total}
    if scores.count:
        result = scores.result()
        summary.update(dataset_max_F=result["max_F"], dataset_MAE=result["MAE"])
        print(f"saliency vs object masks (indicative): max F {result['max_F']:.3f}, MAE {result['MAE']:.3f}")
    return summary
