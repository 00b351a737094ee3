"""guide.split clusters (guide/clusters.py): shared regions split by clusters of the classifier's
features, named by many pixels' CAM shares; through CREATE_GUIDE on a tiny VOC-layout set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guide import clusters

pytest.importorskip("cv2")


def two_parts(pixels: int = 3000, seed: int = 0):
    """Features of two parts (well apart in feature space) whose per-pixel CAM shares lean only
    slightly to the right class and are mostly noise: per pixel the argmax is barely better than
    a coin toss."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 2, pixels)
    centers = rng.normal(size=(2, 16)) * 3
    features = centers[truth] + rng.normal(size=(pixels, 16))
    lean = np.where(truth == 0, 0.04, -0.04)
    first = np.clip(0.5 + lean + rng.normal(scale=0.2, size=pixels), 0, 1)
    return features, np.stack([first, 1 - first]), truth


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    points, centers = rng.normal(size=(500, 8)), rng.normal(size=(7, 8)).astype(np.float32)
    brute = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(clusters.nearest(points, centers, chunk=64), brute)


def test_clusters_named_by_many_pixels_beat_the_per_pixel_choice():
    features, shares, truth = two_parts()
    per_pixel = (shares.argmax(0) == truth).mean()
    namers = clusters.fit_namers(features, shares, counts=(2, 4))
    assert [n.centers.shape[0] for n in namers] == [2, 4]
    assert all(n.names.shape[1] == 2 for n in namers)
    chosen = clusters.vote(namers, features)
    assert per_pixel < 0.65
    assert (chosen == truth).mean() > 0.98


def test_a_cluster_is_named_by_the_mean_share_of_its_pixels():
    features = np.array([[0.0, 0.0]] * 4 + [[10.0, 10.0]] * 4)
    shares = np.array([[0.9, 0.7, 0.8, 0.6, 0.2, 0.1, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4, 0.8, 0.9, 0.7, 0.6]])
    (namer,) = clusters.fit_namers(features, shares, counts=(2,))
    near_origin = clusters.nearest(np.zeros((1, 2)), namer.centers)[0]
    assert np.allclose(namer.names[near_origin], [0.75, 0.25])
    assert np.allclose(namer.names[1 - near_origin], [0.25, 0.75])
    assert list(clusters.vote([namer], np.array([[1.0, 0.0], [9.0, 9.0]]))) == [0, 1]


def test_samples_keep_the_smallest_keys_up_to_the_cap_per_set():
    samples = clusters.Samples(per_set=5)
    rng = np.random.default_rng(0)
    offered = []
    for batch in range(3):
        keys = rng.random(4)
        features = np.full((4, 2), batch, np.float32) + np.arange(4)[:, None]
        samples.add((1, 2), keys, features, np.stack([keys, 1 - keys]))
        offered += list(keys)
    samples.add((1, 3), np.array([0.5]), np.zeros((1, 2)), np.array([[0.5], [0.5]]))
    keys, features, shares = samples.sets[(1, 2)]
    assert sorted(keys) == sorted(offered)[:5]  # a bottom-k sample: uniform over all offered pixels
    assert features.dtype == np.float16 and features.shape == (5, 2)
    assert np.allclose(shares[0], keys)  # rows stay together
    assert len(samples.sets[(1, 3)][0]) == 1


def test_models_survive_the_file(tmp_path):
    features, shares, _ = two_parts(pixels=400)
    models = {
        (1, 2): clusters.fit_namers(features, shares, counts=(2, 3)),
        (2, 5, 7): clusters.fit_namers(features, np.stack([shares[0], shares[1] / 2, shares[1] / 2]), counts=(4,)),
    }
    clusters.save_namers(tmp_path / "m.npz", models)
    loaded = clusters.load_namers(tmp_path / "m.npz")
    assert set(loaded) == set(models)
    for classes, namers in models.items():
        assert len(loaded[classes]) == len(namers)
        for a, b in zip(namers, loaded[classes]):
            assert np.array_equal(a.centers, b.centers) and np.array_equal(a.names, b.names)


@pytest.mark.parametrize("size", [(37, 53), (8, 8), (64, 20)])
def test_features_at_pixels_are_those_of_the_upsampled_map(size):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    maps = torch.rand(6, 5, 4) - 0.3
    whole = F.normalize(F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0], dim=0)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, size[0], 300), rng.integers(0, size[1], 300)
    rows[:2], cols[:2] = (0, size[0] - 1), (0, size[1] - 1)  # the corners: clamped at the border
    at = clusters.FeatureMaps.at(maps, rows, cols, size)
    assert at.shape == (300, 6)
    assert np.allclose(at, whole[:, rows, cols].T.numpy(), atol=1e-5)


def test_kmeans_finds_separated_groups_and_beats_a_random_start():
    rng = np.random.default_rng(3)
    truth_centers = rng.normal(size=(5, 12)) * 6
    labels = rng.integers(0, 5, 2000)
    points = (truth_centers[labels] + rng.normal(size=(2000, 12))).astype(np.float32)
    centers = clusters.kmeans(points, 5, seed=0)
    assert centers.shape == (5, 12)
    # every true group is one cluster: each center near one true center, all five different
    matched = ((centers[:, None] - truth_centers[None]) ** 2).sum(-1).argmin(1)
    assert sorted(matched) == [0, 1, 2, 3, 4]
    assert np.abs(centers - truth_centers[matched]).max() < 0.3
    # deterministic for a seed
    assert np.array_equal(centers, clusters.kmeans(points, 5, seed=0))


def test_kmeans_attempts_keep_the_cheapest():
    """Several attempts return the cheapest one's centers: on this data and seed the first start
    (the one a single attempt makes) is not the cheapest, so keeping the first would fail."""
    rng = np.random.default_rng(4)
    points = rng.normal(size=(3000, 6)).astype(np.float32)

    def cost(centers):
        return ((points[:, None] - centers[None]) ** 2).sum(-1).min(1).sum()

    assert cost(clusters.kmeans(points, 7, seed=1, attempts=4)) < cost(clusters.kmeans(points, 7, seed=1)) - 10
    with pytest.raises(ValueError, match="attempts"):
        clusters.kmeans(points, 7, attempts=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_on_a_gpu_gives_the_cpu_clusters():
    """The same seed gives the same starts on both devices (NumPy draws them), so the same clusters."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 4000)
    points = (rng.normal(size=(5, 16))[labels] * 6 + rng.normal(size=(4000, 16))).astype(np.float32)
    on_cpu, on_gpu = clusters.kmeans(points, 5), clusters.kmeans(points, 5, device="cuda")
    assert np.allclose(on_cpu, on_gpu, atol=1e-3)
    # the starts themselves, on overlapping data where other starts would end elsewhere
    mixed = torch.from_numpy(np.random.default_rng(5).normal(size=(3000, 8)).astype(np.float32))
    starts = [
        clusters._kmeans_plus_plus(mixed.to(device), (mixed.to(device) ** 2).sum(1), 6, np.random.default_rng(0))
        for device in ("cpu", "cuda")
    ]
    assert torch.equal(starts[0], starts[1].cpu())
    assert np.array_equal(clusters.nearest(points, on_cpu), clusters.nearest(points, on_gpu, device="cuda"))
