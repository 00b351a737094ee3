"""Data sets: ``build(cfg, split)`` gives an :class:`ImageSet` of the configured kind."""

from __future__ import annotations

from config import VOC_CLASSES
from datasets.base import ImageSet, Problem
from datasets.folder import FolderImageSet
from datasets.voc import VOCImageSet, read_class_names


def split_name(cfg, split: str) -> str:
    """``train``/``val`` as the config names them for this data set."""
    return {"train": cfg.dataset.train_split, "val": cfg.dataset.val_split}.get(split, split)


def build_unchecked(cfg, split: str) -> ImageSet:
    """The split as its files list it, bad images included (what the data check examines).

    The synthetic set is generated on first use (deterministic from ``synthetic.seed``)."""
    root = cfg.path(cfg.dataset.root)
    name = split_name(cfg, split)
    if cfg.dataset.kind == "synthetic":
        from datasets import synthetic

        synthetic.ensure_generated(cfg)
    if cfg.dataset.kind in ("synthetic", "voc"):
        class_names = cfg.class_names or read_class_names(root) or list(VOC_CLASSES)
        id_list = cfg.path(cfg.dataset.train_list) if (split == "train" and cfg.dataset.train_list) else None
        return VOCImageSet(root, name, class_names, id_list)
    return FolderImageSet(root, name, cfg.class_names or None, cfg.dataset.label_source)


def build(cfg, split: str) -> ImageSet:
    """The ``split`` ("train", "val" or a data set's own split name) of the configured data set.

    With ``dataset.on_bad_image = skip`` the images the data check finds bad are left out (listed
    in the set's ``skipped``); the check runs once per split and process. A set-level problem
    (e.g. a duplicated id) raises ``datasets.check.DataError`` then, as no skipping repairs it.
    With ``stop`` (the default) the driver's check before any stage has already refused bad data."""
    image_set = build_unchecked(cfg, split)
    if cfg.dataset.on_bad_image == "skip":
        from datasets.check import ids_to_skip

        image_set.drop(ids_to_skip(cfg, split, image_set))
    return image_set


__all__ = ["ImageSet", "Problem", "build", "build_unchecked", "split_name"]
