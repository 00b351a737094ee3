"""The interface every data set offers to the stages, and the problems loading one can find."""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common import files

# kind of problem -> whether dropping the image fixes it (dataset.on_bad_image = skip can), and
# what it means. The others are set-level: the label source or the file listing is inconsistent,
# and no choice of images repairs that.
PROBLEM_KINDS: dict[str, tuple[bool, str]] = {
    "missing_image": (True, "listed id with no image file"),
    "empty_image": (True, "0-byte image file"),
    "unreadable_image": (True, "not an image that can be read"),
    "truncated_image": (True, "image file cut short or corrupt"),
    "unsupported_mode": (True, "pixel mode that cannot be converted to RGB"),
    "missing_mask": (True, "id listed in the segmentation split without its mask"),
    "unreadable_mask": (True, "mask file that cannot be read"),
    "mask_size": (True, "mask size differs from the image as displayed"),
    "mask_values": (True, "mask values beyond the classes 0..C and 255"),
    "mask_colours": (True, "RGB mask colours outside the VOC palette"),
    "missing_labels": (True, "no annotation and no mask gives the image's labels"),
    "unreadable_labels": (True, "annotation file that cannot be read"),
    "duplicate_id": (False, "id listed more than once"),
    "two_files": (False, "two image files for one id"),
    "label_without_image": (False, "label row without an image"),
    "image_without_label": (False, "image without a label row"),
    "unknown_class": (False, "class name not among the class names"),
    "csv_encoding": (False, "labels.csv line that is not UTF-8"),
    "unloadable_split": (False, "the split cannot be loaded at all"),
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data set: the file it concerns, the image id where there is one,
    what is wrong, and whether dropping the image fixes it (``image_level``) or the run must stop
    until the data are fixed."""

    kind: str  # a key of PROBLEM_KINDS
    path: str
    message: str
    image_id: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; expected one of {sorted(PROBLEM_KINDS)}")

    @property
    def image_level(self) -> bool:
        return PROBLEM_KINDS[self.kind][0]

    def as_dict(self) -> dict:
        return {**asdict(self), "image_level": self.image_level}


def _canonical_name(name: str) -> str:
    """A class name with case and separators ('-', ' ', '_') ignored: 'Garbage-bag' ~ 'garbage_bag'."""
    return re.sub(r"[\s_\-]+", "_", name.strip().casefold())


def nearest_class_name(name: str, class_names: list[str]) -> str | None:
    """The known class name a misspelt one most likely means: the same name up to case and
    separators, else difflib's closest (similarity >= 0.6), else None."""
    canonical = {_canonical_name(known): known for known in class_names}
    if _canonical_name(name) in canonical:
        return canonical[_canonical_name(name)]
    close = difflib.get_close_matches(_canonical_name(name), list(canonical), n=1, cutoff=0.6)
    return canonical[close[0]] if close else None


def suspicious_names(counts: dict[str, int]) -> dict[str, str]:
    """Among class names seen in the labels (no class list given), those that look like a
    misspelling of another: equal up to case and separators ('Car' beside 'car'), or very close
    (similarity >= 0.85) to a name used at least five times as often. Maps each to that name."""
    suspects: dict[str, str] = {}
    by_count = sorted(counts, key=lambda n: (-counts[n], n != n.casefold(), n))
    for rank, name in enumerate(by_count):
        for other in by_count[:rank]:  # only names used at least as often
            same = _canonical_name(other) == _canonical_name(name)
            close = (
                counts[other] >= 5 * counts[name]
                and difflib.SequenceMatcher(None, other.casefold(), name.casefold()).ratio() >= 0.85
            )
            if same or close:
                suspects[name] = other
                break
    return suspects


class ImageSet(ABC):
    """One split of a data set: ids, and for each id the RGB image, its image-level labels and,
    where one exists, its ground-truth mask (0 background, 1..C classes, 255 ignore).

    Loading never stops at the first inconsistency: what it finds (duplicated ids, label rows
    without images, unknown class names, ...) is kept in ``problems`` for the data check
    (``datasets.check``), which also checks every file."""

    def __init__(self, split: str, class_names: list[str], ids: list[str]) -> None:
        self.split = split
        self.class_names = list(class_names)
        self.ids = list(ids)
        self.problems: list[Problem] = []
        self.skipped: list[str] = []  # ids dropped by dataset.on_bad_image = skip

    @property
    def num_classes(self) -> int:
        """C, the number of classes of interest (background not counted)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    @abstractmethod
    def image(self, image_id: str) -> np.ndarray:
        """RGB uint8 (H, W, 3) as displayed (EXIF orientation applied)."""

    @abstractmethod
    def labels(self, image_id: str) -> np.ndarray:
        """float32 (C,) multi-hot; entry c-1 is class id c."""

    @abstractmethod
    def mask(self, image_id: str) -> np.ndarray | None:
        """uint8 (H, W) ground truth, or None where the image has none."""

    def image_path(self, image_id: str) -> Path | None:
        """The image file of an id, or None where there is none (for the data check)."""
        return None

    def mask_path(self, image_id: str) -> Path | None:
        """The mask file of an id, or None where there is none (for the data check)."""
        return None

    def mask_expected(self, image_id: str) -> bool:
        """Whether the data set promises a mask for this id (a missing one is then a problem)."""
        return False

    def image_size(self, image_id: str) -> tuple[int, int]:
        """(H, W) of the image; subclasses read it from the file header without decoding."""
        return tuple(self.image(image_id).shape[:2])

    def has_mask(self, image_id: str) -> bool:
        return self.mask(image_id) is not None

    def class_ids(self, image_id: str) -> list[int]:
        """The ids (1..C) of the classes the image is labelled with."""
        return [int(c) + 1 for c in np.flatnonzero(self.labels(image_id) > 0.5)]

    def labels_from_mask(self, mask: np.ndarray) -> np.ndarray:
        present = np.unique(mask)
        vector = np.zeros(self.num_classes, dtype=np.float32)
        for value in present:
            if 1 <= value <= self.num_classes:
                vector[value - 1] = 1.0
        return vector

    def drop(self, image_ids) -> None:
        """Leave these ids out of the split (dataset.on_bad_image = skip); they are kept in
        ``skipped`` for the report."""
        unwanted = set(image_ids)
        self.skipped = sorted(unwanted.intersection(self.ids) | set(self.skipped))
        self.ids = [i for i in self.ids if i not in unwanted]


def _list_id(word: str) -> str:
    """The id in an id list's first word: the word, or the file stem of a path such as DeepLab's
    ``/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`` lines."""
    return Path(word).stem if "/" in word or "\\" in word else word


def read_id_lines(path) -> list[tuple[int, str]]:
    """(line number, id) of an id list: the first word of each line (a path's file stem); blank
    lines skipped."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [
                (line_no, _list_id(line.split()[0])) for line_no, line in enumerate(handle, start=1) if line.strip()
            ]
    except (OSError, UnicodeDecodeError) as err:
        raise OSError(f"cannot read id list {path}: {err}") from err


def read_id_list(path) -> list[str]:
    """Ids, one per line (the first word of each line; blank lines skipped)."""
    return [image_id for _, image_id in read_id_lines(path)]


def unique_ids(id_lines: list[tuple[int, str]], source: Path, split: str) -> tuple[list[str], list[Problem]]:
    """The ids of a split list with repeats removed (the first kept), and one problem per
    repeated id naming the lines it is on."""
    lines: dict[str, list[int]] = {}
    for line_no, image_id in id_lines:
        lines.setdefault(image_id, []).append(line_no)
    problems = [
        Problem(
            "duplicate_id",
            str(source),
            f"id {image_id!r} is listed {len(at)} times (lines {', '.join(map(str, at))})",
            image_id,
            split,
        )
        for image_id, at in lines.items()
        if len(at) > 1
    ]
    return list(lines), problems


class FolderOfImages(ImageSet):
    """An image set whose images are files in one folder, ``image_folder``, listed by
    :func:`list_images` into ``_images`` (id -> its files) by the subclass."""

    image_folder: Path
    _images: dict[str, list[Path]]

    def image_path(self, image_id: str) -> Path | None:
        found = self._images.get(image_id)
        return found[0] if found else None

    def _existing_image(self, image_id: str) -> Path:
        path = self.image_path(image_id)
        if path is None:
            raise FileNotFoundError(f"no image for id {image_id!r} in {self.image_folder}")
        return path

    def image(self, image_id: str) -> np.ndarray:
        return files.read_image(self._existing_image(image_id))

    def image_size(self, image_id: str) -> tuple[int, int]:
        return files.image_size(self._existing_image(image_id))


def list_images(folder: Path, suffixes) -> dict[str, list[Path]]:
    """Every image file in ``folder`` by id (file stem), from one directory listing; an id with
    two files (a.jpg and a.png) maps to both, in the order of ``suffixes`` (the first is used).
    Suffixes match in any case ('.Jpg'); hidden files ('._a.jpg' that macOS leaves in archives)
    are no images."""
    order = {suffix.lower(): rank for rank, suffix in reversed(list(enumerate(suffixes)))}
    found: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return found
    entries = [e for e in folder.iterdir() if e.suffix.lower() in order and not e.name.startswith(".")]
    for entry in sorted(entries, key=lambda p: (p.stem, order[p.suffix.lower()], p.suffix)):
        if entry.is_file():
            found.setdefault(entry.stem, []).append(entry)
    return found


def two_file_problems(found: dict[str, list[Path]], ids, split: str) -> list[Problem]:
    """One problem per id of ``ids`` with more than one image file (only the first is ever used)."""
    return [
        Problem(
            "two_files",
            str(found[i][0]),
            f"id {i!r} has {len(found[i])} image files ({', '.join(p.name for p in found[i])}); "
            f"only {found[i][0].name} would be used: remove or rename the others",
            i,
            split,
        )
        for i in ids
        if len(found.get(i, ())) > 1
    ]
