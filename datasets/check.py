"""The data check: every problem of the configured data set at once, before any work.

``check_data(cfg, splits)`` examines each split's files, mostly from their headers: per image a
missing, empty (0 bytes), unreadable, truncated or unconvertible file; a promised mask that is
missing, a mask that cannot be read, whose size differs from the image *as displayed* (EXIF
orientation applied), whose values lie beyond 0..C and 255, or whose RGB colours are not VOC
palette colours; per data set what loading found (``ImageSet.problems``): duplicated ids, two
image files for one id, label rows without an image, images without a label row, unknown or
misspelt class names with the nearest known name, labels.csv lines that are not UTF-8.

Truncation is the one thing a header cannot show, so each file's end is read as well: a JPEG
must end with its EOI marker (FFD9) and a PNG must pass ``verify`` (chunk CRCs up to IEND,
without inflating pixels); a JPEG without the marker at its end (trailer data) and other formats
are decoded in full, which is the only proof. Masks are decoded (their values are checked).

``enforce(cfg, check)`` then stops the run with the full list (``DataError``) unless
``dataset.on_bad_image = skip`` and every problem is one that dropping its image fixes; it
returns the ids to drop per split. ``datasets.build`` drops them in skip mode (``ids_to_skip``,
checked once per split and process). ``write_report`` writes the list as JSON.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from common import files
from datasets.base import PROBLEM_KINDS, ImageSet, Problem, nearest_class_name
from datasets.folder import FolderImageSet
from datasets.voc import VOCImageSet, xml_object_names

__all__ = [
    "PROBLEM_KINDS",
    "DataCheck",
    "DataError",
    "Problem",
    "check_data",
    "enforce",
    "ids_to_skip",
    "inspect_image",
    "inspect_mask",
    "write_report",
]

JPEG_EOI = b"\xff\xd9"
# bytes read from a JPEG's end to find its EOI marker (some writers pad after it)
TAIL_BYTES = 64
# mask values listed in a problem before the rest are counted
MAX_VALUES_LISTED = 8
CHECK_THREADS = max(1, min(8, os.cpu_count() or 1))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


class DataError(ValueError):
    """The data check found problems the configured ``dataset.on_bad_image`` does not allow;
    the message lists every one of them."""


@dataclass
class ImageFacts:
    """What the check learnt about one image file: its problems (kind, message) and, where the
    header could be read, its stored and displayed (H, W) and EXIF orientation."""

    problems: list[tuple[str, str]] = field(default_factory=list)
    stored_size: tuple[int, int] | None = None
    displayed_size: tuple[int, int] | None = None
    orientation: int = 1


@dataclass
class DataCheck:
    """The outcome of ``check_data``: ``problems`` (each with its file, image id, split, message and
    whether it is image-level), ``bad_ids`` per split (ids with an image-level problem, what skip
    mode drops), ``images`` checked per split, and the wall time."""

    dataset: str
    root: str
    images: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    bad_ids: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def set_problems(self) -> list[Problem]:
        """Problems no choice of images repairs: the run must stop until the data are fixed."""
        return [p for p in self.problems if not p.image_level]

    @property
    def image_problems(self) -> list[Problem]:
        """Problems that dropping their image fixes (dataset.on_bad_image = skip)."""
        return [p for p in self.problems if p.image_level]

    def _shown_path(self, path: str) -> str:
        try:
            relative = os.path.relpath(path, self.root)
        except ValueError:  # another drive (Windows)
            return path
        return path if relative.startswith("..") else relative

    def _line(self, problem: Problem) -> str:
        where = self._shown_path(problem.path)
        tags = ", ".join(t for t in (f"id {problem.image_id}" if problem.image_id else "", problem.split) if t)
        return f"  {where}{f' ({tags})' if tags else ''}: [{problem.kind}] {problem.message}"

    def format(self) -> str:
        """The full list, readable: a summary line, set-level problems, then image problems."""
        counts = ", ".join(f"{split} {_count(n, 'image')}" for split, n in self.images.items())
        bad = sorted({i for ids in self.bad_ids.values() for i in ids})
        lines = [
            f"Data check of the {self.dataset} data set at {self.root} ({counts}; "
            f"{self.seconds:.2f} s): "
            + (
                "no problems"
                if self.ok
                else f"{_count(len(self.problems), 'problem')}: {len(self.set_problems)} set-level, "
                f"{len(self.image_problems)} in {_count(len(bad), 'image')}"
            )
        ]
        if self.set_problems:
            lines.append("Set-level problems (fix the data; dropping images does not repair these):")
            lines += [self._line(p) for p in self.set_problems]
        if self.image_problems:
            lines.append(f"Image problems ({_count(len(bad), 'image')}; dataset.on_bad_image=skip drops them):")
            lines += [self._line(p) for p in self.image_problems]
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "root": self.root,
            "images": dict(self.images),
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "set_level_problems": len(self.set_problems),
            "image_problems": len(self.image_problems),
            "bad_ids": {split: list(ids) for split, ids in self.bad_ids.items()},
            "problems": [p.as_dict() for p in self.problems],
        }


_MODE_CONVERTS: dict[str, bool] = {}


def _mode_converts(mode: str) -> bool:
    """Whether ``files.image_to_rgb`` handles a pixel mode (tried once on a 1x1 image)."""
    if mode not in _MODE_CONVERTS:
        try:
            files.image_to_rgb(Image.new(mode, (1, 1)))
            _MODE_CONVERTS[mode] = True
        except ValueError:
            _MODE_CONVERTS[mode] = False
        except Exception:  # PIL cannot even create one: no evidence against the mode
            _MODE_CONVERTS[mode] = True
    return _MODE_CONVERTS[mode]


def _ends_with_eoi(path: Path, size: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(max(0, size - TAIL_BYTES))
        tail = handle.read()
    return tail.rstrip(b"\x00\r\n ").endswith(JPEG_EOI)


def _decode_error(path: Path) -> str | None:
    """Why the file cannot be decoded in full, or None where it can."""
    try:
        with Image.open(path) as img:
            img.load()
    except files.IMAGE_ERRORS as err:
        return str(err) or type(err).__name__
    return None


def inspect_image(path: Path) -> ImageFacts:
    """Check one image file: empty, unreadable header, truncated or corrupt, pixel mode; and its
    stored and displayed size. Reads the header and the file's end; decodes pixels only where the
    end does not prove the file whole (see the module docstring)."""
    facts = ImageFacts()
    try:
        size = path.stat().st_size
    except OSError as err:
        facts.problems.append(("unreadable_image", f"cannot read the file: {err}"))
        return facts
    if size == 0:
        facts.problems.append(("empty_image", "the file is empty (0 bytes)"))
        return facts
    try:
        with Image.open(path) as img:
            fmt, mode = img.format, img.mode
            facts.stored_size = (img.height, img.width)
            facts.orientation = files.exif_orientation(img)
    except files.IMAGE_ERRORS as err:
        facts.problems.append(("unreadable_image", f"not an image that can be read ({err})"))
        return facts
    height, width = facts.stored_size
    facts.displayed_size = (width, height) if facts.orientation in files.QUARTER_TURN_ORIENTATIONS else (height, width)
    if fmt == "PNG":
        try:
            with Image.open(path) as img:
                img.verify()
            error = None
        except files.IMAGE_ERRORS as err:
            error = str(err) or type(err).__name__
    elif fmt == "JPEG" and _ends_with_eoi(path, size):
        error = None
    else:
        error = _decode_error(path)
    if error is not None:
        facts.problems.append(("truncated_image", f"the {fmt} file is cut short or corrupt ({error}; {size} bytes)"))
    if not _mode_converts(mode):
        facts.problems.append(("unsupported_mode", f"pixel mode {mode} cannot be converted to RGB"))
    return facts


def inspect_mask(path: Path, image: ImageFacts, num_classes: int) -> list[tuple[str, str]]:
    """Check one mask: readable, the size of the image as displayed, values 0..C or 255, and
    (RGB masks) colours of the VOC palette."""
    try:
        if path.stat().st_size == 0:
            return [("unreadable_mask", "the mask file is empty (0 bytes)")]
        mask = files.read_label_png(path)
    except OSError as err:
        reason = str(err.__cause__ or err)
        return [("mask_colours" if "VOC palette" in reason else "unreadable_mask", reason)]
    problems = []
    if image.displayed_size is not None and mask.shape != image.displayed_size:
        (mh, mw), (ih, iw) = mask.shape, image.displayed_size
        hint = ""
        if image.orientation != 1 and mask.shape == image.stored_size:
            hint = (
                f"; it matches the stored pixels, but the image has EXIF orientation "
                f"{image.orientation} and is used as displayed: draw the mask on the upright image"
            )
        problems.append(("mask_size", f"the mask is {mh}x{mw} (HxW), the image as displayed is {ih}x{iw}{hint}"))
    counts = np.bincount(mask.reshape(-1), minlength=256)
    beyond = [v for v in np.flatnonzero(counts) if num_classes < v < 255]
    if beyond:
        listed = ", ".join(str(v) for v in beyond[:MAX_VALUES_LISTED]) + (
            f" and {len(beyond) - MAX_VALUES_LISTED} more" if len(beyond) > MAX_VALUES_LISTED else ""
        )
        pixels = int(counts[beyond].sum())
        problems.append(
            (
                "mask_values",
                (f"values {listed} ({pixels} pixels) are beyond the classes 0..{num_classes} and 255 (ignore)"),
            )
        )
    return problems


def _image_folder(image_set: ImageSet) -> Path | None:
    if isinstance(image_set, VOCImageSet):
        return image_set.root / "JPEGImages"
    if isinstance(image_set, FolderImageSet):
        return image_set.root / "images"
    return None


class _Checker:
    """One check_data call: per-file results are kept by path, so splits that share images
    (a folder set without split lists) read each file once."""

    def __init__(self) -> None:
        self.images: dict[Path, ImageFacts] = {}
        self.masks: dict[tuple[Path, int], list[tuple[str, str]]] = {}

    def image(self, path: Path) -> ImageFacts:
        if path not in self.images:
            self.images[path] = inspect_image(path)
        return self.images[path]

    def mask(self, path: Path, image: ImageFacts, num_classes: int) -> list[tuple[str, str]]:
        key = (path, num_classes)
        if key not in self.masks:
            self.masks[key] = inspect_mask(path, image, num_classes)
        return self.masks[key]

    def _files(self, image_set: ImageSet, image_id: str) -> list[tuple[str, str, Path]]:
        """(kind, message, file) of every problem of one id's image and mask files."""
        found: list[tuple[str, str, Path]] = []
        image_path = image_set.image_path(image_id)
        facts = ImageFacts()
        if image_path is None:
            folder = _image_folder(image_set)
            found.append(
                (
                    "missing_image",
                    f"id {image_id!r} is listed but has no image file",
                    folder / image_id if folder else Path(image_id),
                )
            )
        else:
            facts = self.image(image_path)
            found += [(kind, message, image_path) for kind, message in facts.problems]
        mask_path = image_set.mask_path(image_id)
        if mask_path is not None:
            found += [
                (kind, message, mask_path) for kind, message in self.mask(mask_path, facts, image_set.num_classes)
            ]
        elif image_set.mask_expected(image_id):
            found.append(
                (
                    "missing_mask",
                    "the id is in the segmentation split but has no mask",
                    image_set.root / "SegmentationClass" / f"{image_id}.png",
                )
            )
        return found

    def split(self, image_set: ImageSet, split: str) -> list[Problem]:
        problems = [p if p.split else _with_split(p, split) for p in image_set.problems]
        # file reads and PNG/JPEG decoding release the GIL: threads overlap them
        with ThreadPoolExecutor(CHECK_THREADS) as pool:
            per_id = list(pool.map(lambda image_id: self._files(image_set, image_id), image_set.ids))
        unknown_in_xml: dict[str, list[Path]] = {}
        for image_id, found in zip(image_set.ids, per_id):
            if isinstance(image_set, VOCImageSet):
                found += self._voc_labels(image_set, image_id, image_set.mask_path(image_id), unknown_in_xml)
            problems += [Problem(kind, str(path), message, image_id, split) for kind, message, path in found]
        for name, paths in sorted(unknown_in_xml.items()):
            nearest = nearest_class_name(name, image_set.class_names)
            hint = f"did you mean {nearest!r}?" if nearest else f"known: {', '.join(image_set.class_names)}"
            problems.append(
                Problem(
                    "unknown_class",
                    str(paths[0]),
                    f"class {name!r} ({_count(len(paths), 'annotation')}, first "
                    f"{paths[0].name}) is not among the class names; {hint}",
                    split=split,
                )
            )
        return problems

    @staticmethod
    def _voc_labels(
        image_set: VOCImageSet, image_id: str, mask_path: Path | None, unknown: dict[str, list[Path]]
    ) -> list[tuple[str, str, Path]]:
        xml = image_set.annotation_path(image_id)
        if xml is None:
            if mask_path is None:
                return [
                    (
                        "missing_labels",
                        "neither an annotation XML nor a mask gives the image's labels",
                        image_set.root / "Annotations" / f"{image_id}.xml",
                    )
                ]
            return []
        try:
            names = xml_object_names(xml)
        except OSError as err:
            return [("unreadable_labels", str(err), xml)]
        for name in sorted(set(names) - set(image_set.class_names) - {""}):
            unknown.setdefault(name, []).append(xml)
        return []


def _with_split(problem: Problem, split: str) -> Problem:
    return Problem(
        problem.kind, problem.path, problem.message, problem.image_id, split if problem.image_level else problem.split
    )


def _merge(problems: list[Problem]) -> list[Problem]:
    """Problems in a stable order, each once: the same set-level problem found while loading two
    splits (they share labels.csv) is listed once."""
    seen, merged = set(), []
    for problem in problems:
        key = (
            problem.kind,
            problem.path,
            problem.image_id,
            problem.message,
            problem.split if problem.image_level else None,
        )
        if key not in seen:
            seen.add(key)
            merged.append(problem)
    return sorted(merged, key=lambda p: (p.image_level, p.path, p.kind, p.split or ""))


_CHECKED: dict[tuple, DataCheck] = {}


def _check_key(cfg, split: str) -> tuple:
    from datasets import split_name

    return (
        cfg.dataset.kind,
        str(cfg.path(cfg.dataset.root)),
        split_name(cfg, split),
        cfg.dataset.label_source,
        tuple(cfg.class_names or ()),
        cfg.dataset.train_list if split == "train" else "",
    )


def check_data(cfg, splits=("train", "val"), image_sets: dict[str, ImageSet] | None = None) -> DataCheck:
    """Check the configured data set's ``splits`` ("train", "val", or a data set's own split
    names) and return every problem found; nothing raises on bad data (a split that cannot be
    loaded at all is a problem too). ``image_sets`` may pass splits already built with
    ``datasets.build_unchecked``. Each split's result is remembered for ``ids_to_skip``."""
    from datasets import build_unchecked

    started = time.perf_counter()
    root = str(cfg.path(cfg.dataset.root))
    checker = _Checker()
    combined = DataCheck(cfg.dataset.kind, root)
    for split in splits:
        split_started = time.perf_counter()
        one = DataCheck(cfg.dataset.kind, root)
        try:
            image_set = (image_sets or {}).get(split)
            if image_set is None:
                image_set = build_unchecked(cfg, split)
        except (OSError, ValueError) as err:
            one.problems = [Problem("unloadable_split", root, f"split {split!r} cannot be loaded: {err}", split=split)]
            one.images[split], one.bad_ids[split] = 0, []
        else:
            one.problems = _merge(checker.split(image_set, split))
            one.images[split] = len(image_set.ids)
            one.bad_ids[split] = sorted({p.image_id for p in one.image_problems if p.image_id})
        one.seconds = time.perf_counter() - split_started
        _CHECKED[_check_key(cfg, split)] = one
        combined.problems += one.problems
        combined.images.update(one.images)
        combined.bad_ids.update(one.bad_ids)
    combined.problems = _merge(combined.problems)
    combined.seconds = time.perf_counter() - started
    return combined


def enforce(cfg, check: DataCheck) -> dict[str, list[str]]:
    """Stop (``DataError`` with the full list) when the check found anything and
    ``dataset.on_bad_image`` is stop, or when any problem is set-level; otherwise return the ids to
    drop per split (empty lists when the data are clean)."""
    if check.ok:
        return {split: [] for split in check.bad_ids}
    if cfg.dataset.on_bad_image == "skip" and not check.set_problems:
        return {split: list(ids) for split, ids in check.bad_ids.items()}
    if check.set_problems:
        advice = "Fix the set-level problems in the data (dataset.on_bad_image=skip cannot: it only drops images)"
    else:
        count = len({i for ids in check.bad_ids.values() for i in ids})
        advice = (
            f"Fix or remove these files, or set dataset.on_bad_image=skip to drop the {count} images (listed in runs/)"
        )
    raise DataError(f"{check.format()}\n{advice}.")


def ids_to_skip(cfg, split: str, image_set: ImageSet | None = None) -> list[str]:
    """The ids of ``split`` that skip mode drops, from the check of that split in this process
    (run now where there was none). Raises ``DataError`` like ``enforce``."""
    key = _check_key(cfg, split)
    if key not in _CHECKED:
        check_data(cfg, [split], {split: image_set} if image_set is not None else None)
    return enforce(cfg, _CHECKED[key]).get(split, [])


def write_report(check: DataCheck, path: Path) -> None:
    """The check as JSON (summary, every problem, the bad ids per split), written atomically."""
    files.write_text(Path(path), json.dumps(check.as_dict(), indent=2) + "\n")
