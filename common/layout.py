"""The one place that spells paths under tmp/, checkpoints/ and runs/, and the formats of what
stages exchange through tmp/.

    tmp/saliency/prob/<id>.png            saliency probability, 8-bit grey (p * 255), image size
    tmp/saliency/binary/<id>.png          0/255 view at saliency.threshold, for inspection only
    tmp/saliency/binary/threshold.txt     the threshold of those views
    tmp/attention/cams/<id>.npz           raw CAMs of the image's classes (format below)
    tmp/attention/masks/<id>_c<NN>.png    binary class mask (0/255) of class id NN, image size
    tmp/guide/labels/<id>.png             pseudo label, VOC palette PNG (0 bg, 1..C, 255 ignore)
    tmp/guide/previews/<id>.jpg           image | saliency | CAMs | guide | ground truth
    tmp/guide/clusters_<split>.npz        guide.split clusters: the split's k-means models (guide/clusters.py)
    tmp/deeplab/predictions/<id>.png      DeepLab prediction, VOC palette PNG
    tmp/deeplab/overlays/<id>.jpg         image | ground truth | prediction
    checkpoints/<stage>/{best,last}.pt    trained networks; last.pt holds the full training state
    runs/<stage>/                         tensorboard events, config.json, reports

CAM file (``.npz``): ``class_ids`` int16 (K,) with ids 1..C; ``cams`` float16 (K, h, w), each map
ReLU'd and divided by its maximum (so in [0, 1]), at ceil(H / stride) x ceil(W / stride);
``image_size`` int32 (H, W). Read it with :meth:`Layout.read_cams`, which can upsample to (H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import files


def check_id(image_id: str) -> str:
    if not image_id or "/" in image_id or "\\" in image_id or image_id.startswith("."):
        raise ValueError(f"image id {image_id!r} cannot name a file (no slashes, no leading dot)")
    return image_id


@dataclass
class ClassCams:
    class_ids: np.ndarray  # (K,) int, ids 1..C
    cams: np.ndarray  # (K, h, w) float32 in [0, 1]
    image_size: tuple[int, int]  # (H, W)

    def upsampled(self) -> np.ndarray:
        """The maps at the image's own size, (K, H, W) float32, bilinear."""
        if len(self.class_ids) == 0:
            return np.zeros((0, *self.image_size), dtype=np.float32)
        maps = torch.from_numpy(self.cams.astype(np.float32))[None]
        maps = F.interpolate(maps, size=self.image_size, mode="bilinear", align_corners=False)
        return maps[0].clamp_(0, 1).numpy()

    def masks(self, threshold: float) -> dict[int, np.ndarray]:
        """The binary class regions: class id -> bool (H, W), the upsampled map >= ``threshold``
        (attention.threshold). The one place this rule lives: CREATE_ATTENTION writes these masks
        and whatever recomputes them (tests, benchmarks) calls this."""
        return {int(c): upsampled >= threshold for c, upsampled in zip(self.class_ids, self.upsampled())}


STAGE_FOLDERS = ("saliency", "attention", "guide", "deeplab")


class Layout:
    """Paths of everything a stage reads or writes, from the config's ``paths`` section.

    With ``runtime.experiment = NAME`` the three folders are ``paths.experiments/NAME/{tmp,runs,
    checkpoints}``, so one configuration's outputs stay together and another's never mix in."""

    def __init__(self, cfg) -> None:
        if cfg.runtime.experiment:
            base = cfg.path(cfg.paths.experiments) / check_id(cfg.runtime.experiment)
            self.tmp, self.runs, self.checkpoints = base / "tmp", base / "runs", base / "checkpoints"
        else:
            self.tmp = cfg.path(cfg.paths.tmp)
            self.runs = cfg.path(cfg.paths.runs)
            self.checkpoints = cfg.path(cfg.paths.checkpoints)

    def folder(self, stage: str) -> Path:
        """The tmp/ folder that holds everything one stage writes."""
        if stage not in STAGE_FOLDERS:
            raise ValueError(f"no tmp/ folder for {stage!r}: one of {', '.join(STAGE_FOLDERS)}")
        return self.tmp / stage

    # ---- saliency
    def saliency_prob(self, image_id: str) -> Path:
        return self.folder("saliency") / "prob" / f"{check_id(image_id)}.png"

    def saliency_binary(self, image_id: str) -> Path:
        return self.folder("saliency") / "binary" / f"{check_id(image_id)}.png"

    def saliency_binary_threshold(self) -> Path:
        """The threshold every binary view was last written at, once all of them were."""
        return self.folder("saliency") / "binary" / "threshold.txt"

    def write_saliency(self, image_id: str, prob: np.ndarray) -> None:
        """Store a probability map (H, W) in [0, 1] as 8 bits."""
        files.write_gray_png(self.saliency_prob(image_id), np.round(np.clip(prob, 0, 1) * 255))

    def read_saliency(self, image_id: str) -> np.ndarray:
        """The stored probability map, float32 (H, W) in [0, 1]."""
        return files.read_label_png(self.saliency_prob(image_id)).astype(np.float32) / 255.0

    # ---- attention
    def cams(self, image_id: str) -> Path:
        return self.folder("attention") / "cams" / f"{check_id(image_id)}.npz"

    def cam_mask(self, image_id: str, class_id: int) -> Path:
        return self.folder("attention") / "masks" / f"{check_id(image_id)}_c{int(class_id):02d}.png"

    def write_cams(self, image_id: str, class_ids, cams: np.ndarray, image_size) -> None:
        files.write_npz(
            self.cams(image_id),
            class_ids=np.asarray(class_ids, dtype=np.int16),
            cams=np.asarray(cams, dtype=np.float16),
            image_size=np.asarray(image_size, dtype=np.int32),
        )

    def read_cams(self, image_id: str) -> ClassCams:
        path = self.cams(image_id)
        try:
            with np.load(path) as data:
                return ClassCams(
                    class_ids=data["class_ids"].astype(np.int64),
                    cams=data["cams"].astype(np.float32),
                    image_size=tuple(int(v) for v in data["image_size"]),
                )
        except (OSError, KeyError, ValueError) as err:
            raise OSError(f"cannot read CAM file {path}: {err}") from err

    def write_cams_and_masks(self, image_id: str, class_ids, cams: np.ndarray, image_size, threshold: float) -> None:
        """The CAMs of one image and its class masks; the masks come from the stored float16 maps
        (:meth:`ClassCams.masks`), so they match what later stages read back."""
        self.write_cams(image_id, class_ids, cams, image_size)
        for class_id, mask in self.read_cams(image_id).masks(threshold).items():
            self.write_cam_mask(image_id, class_id, mask)

    def write_cam_mask(self, image_id: str, class_id: int, mask: np.ndarray) -> None:
        files.write_gray_png(self.cam_mask(image_id, class_id), np.where(mask, 255, 0))

    def read_cam_mask(self, image_id: str, class_id: int) -> np.ndarray:
        """Binary class mask, bool (H, W)."""
        return files.read_label_png(self.cam_mask(image_id, class_id)) > 127

    # ---- guide
    def pseudo_label(self, image_id: str) -> Path:
        return self.folder("guide") / "labels" / f"{check_id(image_id)}.png"

    def guide_preview(self, image_id: str) -> Path:
        return self.folder("guide") / "previews" / f"{check_id(image_id)}.jpg"

    def cluster_models(self, split: str) -> Path:
        return self.folder("guide") / f"clusters_{check_id(split)}.npz"

    # ---- deeplab
    def prediction(self, image_id: str) -> Path:
        return self.folder("deeplab") / "predictions" / f"{check_id(image_id)}.png"

    def overlay(self, image_id: str) -> Path:
        return self.folder("deeplab") / "overlays" / f"{check_id(image_id)}.jpg"

    # ---- checkpoints and runs
    def checkpoint(self, stage: str, which: str = "best") -> Path:
        if which not in ("best", "last"):
            raise ValueError(f"checkpoint {which!r}: expected best or last")
        return self.checkpoints / stage / f"{which}.pt"

    def trained_network(self, folder: str, prefer: str = "best") -> Path | None:
        """The network a trained stage hands on: its ``prefer`` checkpoint (best or last), else the
        other one, else None."""
        for which in (prefer, "last" if prefer == "best" else "best"):
            if self.checkpoint(folder, which).exists():
                return self.checkpoint(folder, which)
        return None

    def handed_on(self, stage, cfg) -> Path | None:
        """The network a training ``stage`` (common/stages.py) hands on under ``cfg``: its
        ``hands_on`` checkpoint, else the other one, else None."""
        return self.trained_network(stage.checkpoint_folder, prefer=stage.hands_on(cfg))

    def run_dir(self, stage: str) -> Path:
        return self.runs / stage

    # ---- what made a stage's outputs (common/provenance.py)
    def record(self, stage) -> Path:
        """``record.json`` beside a stage's outputs: its tmp/ folder, or its checkpoints/ folder."""
        if stage.tmp_folder:
            return self.folder(stage.tmp_folder) / "record.json"
        return self.checkpoints / stage.checkpoint_folder / "record.json"

    def outputs(self, stage) -> Path:
        """The folder that holds everything a stage hands on."""
        return self.folder(stage.tmp_folder) if stage.tmp_folder else self.checkpoints / stage.checkpoint_folder

    def data_digests(self) -> Path:
        """The sha1 of each data file, by size and modification time (tmp/data_digests.json): the
        data digest reads only new or touched files (common/provenance.py)."""
        return self.tmp / "data_digests.json"

    def data_check(self) -> Path:
        """The data check's list of problems (runs/data_check.json)."""
        return self.runs / "data_check.json"
