"""guide.split clusters: saliency regions shared by several classes split by clusters of the
classifier's features over the whole split, instead of a dense CRF per region.

Where a saliency region overlaps several classes the original rule lets a dense CRF on the classes'
CAMs pick a class per pixel. Where two classes' CAMs are nearly equal per pixel (on MSRC, face and
body: face-versus-body AUC 0.59-0.71, docs/RESULTS.md) that choice is close to a coin toss. Here
each pixel of a shared region is described by the classifier's features at its CAM layer
(L2-normalised, bilinear to the image's size). A first pass samples the pixels of every shared
region of the split; k-means models (one per set of classes, at each of ``guide.cluster_counts``)
are fitted to them, and each cluster is named by the mean, over its sampled pixels, of the classes'
CAMs normalised to sum to one: thousands of pixels vote instead of one. A pixel of a shared region
then takes the class its clusters name, their names summed over the models.

Weak supervision holds: the features are the classifier's (trained on image labels), the CAMs name
the clusters. The models are fitted once per split (a fixed seed, images in the split's order, each
image's sample drawn from its own seeded generator) and kept in tmp/guide, so a resumed or
multi-process CREATE_GUIDE labels every image with the same models.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.backbone_parts import to_tensor
from common.distributed import device_for_rank
from common.runtime import select_device
from guide import rules

# the clusters are a property of the data, not of runtime.seed (which CREATE_GUIDE does not read)
SEED = 0
# pixels the k-means of one model is fitted on (a sample of the kept ones); all kept pixels name it
FIT_PIXELS = 60000


def nearest(points: np.ndarray, centers: np.ndarray, chunk: int = 20000, device: str = "cpu") -> np.ndarray:
    """Index of the nearest center (squared Euclidean) of every row of ``points``, computed on ``device``."""
    centers = torch.from_numpy(np.asarray(centers)).to(device)
    return _assign(torch.from_numpy(np.ascontiguousarray(points)), centers, chunk=chunk)[0].cpu().numpy()


def _assign(points: torch.Tensor, centers: torch.Tensor, norms: torch.Tensor | None = None, chunk: int = 20000):
    """Nearest center of each point, and (given the points' squared ``norms``) the squared distance
    to it, else None; on the centers' device, in chunks of ``chunk`` points so a chunk's distances
    stay small (the points may stay on the CPU)."""
    centers = centers.float()
    center_norms = (centers**2).sum(1)
    norms = None if norms is None else norms.to(centers.device)
    nearest_index = torch.empty(len(points), dtype=torch.int64, device=centers.device)
    distance = None if norms is None else torch.empty(len(points), device=centers.device)
    for start in range(0, len(points), chunk):
        part = points[start : start + chunk].to(centers.device, torch.float32)
        # fused: ``2 * part @ centers.T`` would first double the whole chunk (3x slower on a CPU)
        smallest, index = torch.addmm(center_norms, part, centers.T, alpha=-2).min(1)
        nearest_index[start : start + chunk] = index
        if distance is not None:
            distance[start : start + chunk] = smallest + norms[start : start + chunk]
    return nearest_index, None if distance is None else distance.clamp_min(0)


@dataclass
class Namer:
    """One k-means model of a set of classes and its clusters' names: ``names[j]`` is the mean
    normalised CAM of each class (in the set's sorted order) over cluster j's pixels."""

    centers: np.ndarray  # (k, D) float32
    names: np.ndarray  # (k, classes) float64


def kmeans(
    points: np.ndarray, count: int, seed: int = SEED, attempts: int = 1, iterations: int = 50, device: str = "cpu"
) -> np.ndarray:
    """(count, D) k-means centers of ``points`` (n, D): k-means++ starts, Lloyd's iterations until
    no center moves by more than 1e-2 (in squared distance, 1e-4) or ``iterations``; the best of
    ``attempts`` by the sum of squared distances. One attempt by default, as scikit-learn's for
    k-means++ starts: on MSRC three gave pseudo labels of 0.7897 against one's 0.7890 and took
    CREATE_GUIDE 63 s longer (docs/RESULTS.md). Distances and sums are matrix products on
    ``device``: 60,000 points of 1,280 features at 32 clusters take about 2 s on 2 CPU cores and
    0.1 s on a GPU."""
    if attempts < 1:
        raise ValueError(f"kmeans: attempts must be at least 1, not {attempts}")
    rng = np.random.default_rng(seed)
    points = torch.from_numpy(np.ascontiguousarray(points, np.float32)).to(device)
    norms = (points**2).sum(1)
    spread = torch.arange(len(points), device=points.device)
    best, best_cost = None, np.inf
    for _ in range(attempts):
        centers = _kmeans_plus_plus(points, norms, count, rng)
        for _ in range(iterations):
            assigned = _assign(points, centers)[0]
            # per-cluster sums as one matrix product: deterministic on a GPU, where index_add_'s
            # atomic additions are not, and fast on a CPU, where np.add.at over rows was not
            members = torch.zeros((count, len(points)), device=points.device)
            members[assigned, spread] = 1.0
            sums = members @ points
            sizes = torch.bincount(assigned, minlength=count)
            moved = centers.clone()
            filled = sizes > 0  # an empty cluster keeps its center
            moved[filled] = sums[filled] / sizes[filled, None]
            shift = float(((moved - centers) ** 2).sum(1).max())
            centers = moved
            if shift <= 1e-4:
                break
        cost = float(_assign(points, centers, norms)[1].sum()) if attempts > 1 else 0.0
        if best is None or cost < best_cost:
            best, best_cost = centers, cost
    return best.cpu().numpy()


def _kmeans_plus_plus(points: torch.Tensor, norms: torch.Tensor, count: int, rng: np.random.Generator) -> torch.Tensor:
    """k-means++ starting centers: each next one drawn with probability proportional to the squared
    distance to the nearest center so far (drawn by NumPy's generator, so a seed gives the same
    starts on every device, up to rounding)."""

    def squared_distance(index: int) -> torch.Tensor:
        return (torch.addmv(norms, points, points[index], alpha=-2) + norms[index]).clamp_min(0)

    chosen = [int(rng.integers(len(points)))]
    closest = squared_distance(chosen[0])
    for _ in range(1, count):
        weights = closest.double().cpu().numpy()
        total = weights.sum()
        index = int(rng.choice(len(points), p=weights / total)) if total > 0 else int(rng.integers(len(points)))
        chosen.append(index)
        closest = torch.minimum(closest, squared_distance(index))
    return points[chosen].clone()


def fit_namers(
    features: np.ndarray, cam_shares: np.ndarray, counts, seed: int = SEED, device: str = "cpu"
) -> list[Namer]:
    """k-means models of ``features`` (n, D) at each cluster count, every cluster named by the mean
    of ``cam_shares`` (classes, n) over its pixels; the distances computed on ``device``."""
    rng = np.random.default_rng(seed)
    # the kept pixels stay at their float16: kmeans converts its fit sample, nearest each chunk
    # (a float32 copy of a whole set would be 1 GB at 200,000 pixels of 1,280 features)
    namers = []
    for count in counts:
        count = min(int(count), len(features))
        fit = features[np.sort(rng.choice(len(features), min(len(features), FIT_PIXELS), replace=False))]
        centers = kmeans(fit, count, seed, device=device)
        assigned = nearest(features, centers, device=device)
        names = np.zeros((count, cam_shares.shape[0]))
        for cluster in range(count):
            members = assigned == cluster
            if members.any():
                names[cluster] = cam_shares[:, members].mean(1)
        namers.append(Namer(centers, names))
    return namers


def vote(namers: list[Namer], features: np.ndarray) -> np.ndarray:
    """Per row of ``features`` (n, D), the index (in the set's order) of the class its clusters
    name, their names summed over the models."""
    total = np.zeros((len(features), namers[0].names.shape[1]))
    for namer in namers:
        total += namer.names[nearest(features, namer.centers)]
    return total.argmax(1)


class FeatureMaps:
    """The trained classifier's features at its CAM layer: per image the map at the layer's
    resolution, read at any pixels of the image (bilinear, as upsampling the whole map to the
    image's size would give) and L2-normalised per pixel. Only the pixels asked for are computed:
    a whole image's map at 1,280 channels would take about 1 GB at 500 x 375."""

    def __init__(self, cfg, class_names: list[str]) -> None:
        from classifier import find_layer, load_trained

        self.model = load_trained(cfg, class_names, torch.device("cpu"))
        layer = find_layer(self.model, cfg.attention.target_layer or self.model.default_target_layer)
        self._tapped: dict[str, torch.Tensor] = {}
        # the hook lives as long as this (private) model does
        layer.register_forward_hook(lambda module, inputs, output: self._tapped.__setitem__("maps", output.detach()))

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """(D, h, w) float32 features of an RGB uint8 (H, W, 3) image at the layer's resolution."""
        with torch.inference_mode():
            self.model(to_tensor(image, self.model.mean, self.model.std)[None])
            return self._tapped.pop("maps")[0].float()

    @staticmethod
    def at(maps: torch.Tensor, rows: np.ndarray, cols: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(n, D) features of ``maps`` at pixels (``rows``, ``cols``) of an image of ``size`` (H, W)."""
        height, width = size
        # pixel centres in grid_sample's [-1, 1] (align_corners False, clamped at the border): the
        # source positions of F.interpolate(..., size, mode="bilinear", align_corners=False)
        grid = torch.stack(
            [torch.from_numpy((2 * cols + 1) / width - 1), torch.from_numpy((2 * rows + 1) / height - 1)], -1
        ).float()
        with torch.inference_mode():
            sampled = F.grid_sample(
                maps[None], grid[None, None], mode="bilinear", padding_mode="border", align_corners=False
            )[0, :, 0]
            return F.normalize(sampled, dim=0).T.contiguous().numpy()


def _region_pixels(region: np.ndarray, box, class_ids, cams, params):
    """The window of a shared region (as the CRF's), its pixels inside, their rows and columns in
    the image, and their CAM shares."""
    window = rules.crf_window(box, params.crf_margin, region.shape)
    inside = region[window]
    shares = rules.crf_probabilities(np.stack([cams[c][window] for c in class_ids]), False)[:, inside]
    rows, cols = np.nonzero(inside)
    return window, inside, rows + window[0].start, cols + window[1].start, shares


class Samples:
    """Per set of classes, a uniform sample of at most ``per_set`` of the pixels offered (a
    bottom-k sample on random keys), features stored as float16 to halve the memory. Offered
    pixels are kept in parts and cut back to ``per_set`` only once they reach twice that, so
    adding a region does not copy the whole sample."""

    def __init__(self, per_set: int) -> None:
        self.per_set = per_set
        self._parts: dict[tuple[int, ...], list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}

    def add(self, classes: tuple[int, ...], keys: np.ndarray, features: np.ndarray, shares: np.ndarray) -> None:
        parts = self._parts.setdefault(classes, [])
        parts.append((keys, features.astype(np.float16), shares.astype(np.float32)))
        if sum(len(part[0]) for part in parts) >= 2 * self.per_set:
            self._parts[classes] = [self._cut(parts)]

    def _cut(self, parts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        keys = np.concatenate([p[0] for p in parts])
        features = np.concatenate([p[1] for p in parts])
        shares = np.concatenate([p[2] for p in parts], 1)
        if len(keys) > self.per_set:
            kept = np.sort(np.argpartition(keys, self.per_set)[: self.per_set])
            keys, features, shares = keys[kept], features[kept], shares[:, kept]
        return keys, features, shares

    @property
    def sets(self) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per set of classes: keys (n,), features (n, D) float16, CAM shares (classes, n)."""
        return {classes: self._cut(parts) for classes, parts in self._parts.items()}


def _image_rng(image_id: str) -> np.random.Generator:
    # each image its own stream: the sample does not depend on which images came before
    return np.random.default_rng([SEED, zlib.crc32(image_id.encode())])


class _FeaturesOfImage:
    """The CAM layer's map of the image being labelled: the classifier is loaded at the first call
    (a split without shared regions never needs it) and the map computed once per image (every
    shared region of an image is passed the same image array)."""

    def __init__(self, cfg, class_names: list[str]) -> None:
        self.cfg, self.class_names = cfg, class_names
        self._features_of = None
        self._image = self._maps = None

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if self._features_of is None:
            self._features_of = FeatureMaps(self.cfg, self.class_names)
        if image is not self._image:
            self._image, self._maps = image, self._features_of(image)
        return self._maps


class _Collector:
    """The ``split`` of the gathering pass: samples a shared region's pixels (features and CAM
    shares) into ``samples`` and labels nothing (the pass's labels are thrown away)."""

    def __init__(self, cfg, class_names: list[str], samples: Samples) -> None:
        self.cfg, self.samples = cfg, samples
        self._features = _FeaturesOfImage(cfg, class_names)
        self.start("")

    def start(self, image_id: str) -> None:
        self._rng = _image_rng(image_id)

    def __call__(self, image, region, box, class_ids, cams, params):
        window, inside, rows, cols, shares = _region_pixels(region, box, class_ids, cams, params)
        count = min(len(rows), self.cfg.guide.cluster_pixels_per_region)
        keep = self._rng.choice(len(rows), count, replace=False)
        pixels = FeatureMaps.at(self._features(image), rows[keep], cols[keep], region.shape)
        self.samples.add(tuple(class_ids), self._rng.random(count), pixels, shares[:, keep])
        return window, np.zeros(inside.shape, np.uint8)


def gather_and_fit(cfg, image_set, inputs_of, params) -> dict:
    """The k-means models (``{class ids: [Namer, ...]}``) of the shared regions of ``image_set``.

    ``inputs_of(image_id)`` gives :func:`guide.rules.make_pseudo_label`'s arguments of an image.
    Only images tagged with two or more classes can hold a shared region."""
    # the k-means on the run's GPU where there is one (the features are computed on the CPU)
    device = str(device_for_rank(select_device(cfg.runtime.device)))
    samples = Samples(cfg.guide.cluster_pixels_per_set)
    collect = _Collector(cfg, image_set.class_names, samples)
    candidates = [i for i in image_set.ids if len(image_set.class_ids(i)) >= 2]
    for image_id in tqdm(candidates, desc=f"guide {image_set.split}: sampling shared regions"):
        collect.start(image_id)
        rules.make_pseudo_label(**inputs_of(image_id), params=params, split=collect)
    return {
        classes: fit_namers(features, shares, cfg.guide.cluster_counts, device=device)
        for classes, (_, features, shares) in sorted(samples.sets.items())
    }


class ClusterSplit:
    """The ``split`` of :func:`guide.rules.make_pseudo_label`: a shared region's pixels take the
    class their clusters name. A set of classes no model was fitted for (none of its regions was
    seen while fitting) keeps the dense CRF. Features are computed once per image."""

    def __init__(self, cfg, class_names: list[str], namers: dict) -> None:
        self.namers = namers
        self._features = _FeaturesOfImage(cfg, class_names)

    def __call__(self, image, region, box, class_ids, cams, params):
        namers = self.namers.get(tuple(class_ids))
        if namers is None:
            return rules.split_region(image, region, box, class_ids, cams, params)
        window, inside, rows, cols, _ = _region_pixels(region, box, class_ids, cams, params)
        labels = np.zeros(inside.shape, np.uint8)
        pixels = FeatureMaps.at(self._features(image), rows, cols, region.shape)
        labels[inside] = np.asarray(class_ids, np.uint8)[vote(namers, pixels)]
        return window, labels


def save_namers(path, namers: dict) -> None:
    """Store the models in one .npz (written atomically)."""
    from common import files

    arrays = {}
    for classes, models in namers.items():
        prefix = "-".join(map(str, classes))
        for index, namer in enumerate(models):
            arrays[f"{prefix}_{index}_centers"] = namer.centers
            arrays[f"{prefix}_{index}_names"] = namer.names
    files.write_npz(path, **arrays)


def load_namers(path) -> dict:
    namers: dict[tuple[int, ...], dict[int, Namer]] = {}
    with np.load(path) as stored:
        for key in stored.files:
            prefix, index, part = key.split("_")
            classes = tuple(int(c) for c in prefix.split("-"))
            slot = namers.setdefault(classes, {}).setdefault(int(index), Namer(None, None))
            setattr(slot, part, stored[key])
    return {classes: [models[i] for i in sorted(models)] for classes, models in namers.items()}
