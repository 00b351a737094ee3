"""benchmarks/cluster_split.py: clusters of features named by many pixels' CAM shares."""

import numpy as np
import pytest

from benchmarks import cluster_split

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
    shares = np.stack([first, 1 - first])
    return features, shares, truth


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(1)
    points, centers = rng.normal(size=(500, 8)), rng.normal(size=(7, 8))
    brute = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    assert np.array_equal(cluster_split.nearest(points, centers, chunk=64), brute)


def test_clusters_named_by_many_pixels_beat_the_per_pixel_choice():
    features, shares, truth = two_parts()
    per_pixel = (shares.argmax(0) == truth).mean()
    namers = cluster_split.fit_namers(features, shares, counts=(2, 4))
    assert [n.centers.shape[0] for n in namers] == [2, 4]
    assert all(n.names.shape[1] == 2 for n in namers)
    new_features, _, new_truth = two_parts(seed=0)  # the same parts; the vote applies to any pixel
    chosen = cluster_split.vote(namers, new_features)
    assert per_pixel < 0.65
    assert (chosen == new_truth).mean() > 0.98


def test_a_cluster_is_named_by_the_mean_share_of_its_pixels():
    features = np.array([[0.0, 0.0]] * 4 + [[10.0, 10.0]] * 4)
    shares = np.array([[0.9, 0.7, 0.8, 0.6, 0.2, 0.1, 0.3, 0.4], [0.1, 0.3, 0.2, 0.4, 0.8, 0.9, 0.7, 0.6]])
    (namer,) = cluster_split.fit_namers(features, shares, counts=(2,))
    near_origin = cluster_split.nearest(np.zeros((1, 2)), namer.centers)[0]
    assert np.allclose(namer.names[near_origin], [0.75, 0.25])
    assert np.allclose(namer.names[1 - near_origin], [0.25, 0.75])
    assert list(cluster_split.vote([namer], np.array([[1.0, 0.0], [9.0, 9.0]]))) == [0, 1]
