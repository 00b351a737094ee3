import numpy as np
import pytest

from datasets.label_stats import companions, label_matrix

NAMES = ["body", "face", "dog", "cat"]


def _labels(rows):
    return np.array([[name in row for name in NAMES] for row in rows], bool)


def test_a_class_never_seen_without_another_is_reported_with_its_partner():
    rows = [{"body", "face"}] * 6 + [{"body"}] * 3 + [{"dog"}] * 6 + [{"cat", "dog"}] * 2 + [{"cat"}] * 4
    found = companions(_labels(rows), NAMES)
    assert [(c.name, c.partner, c.images, c.shared) for c in found] == [("face", "body", 6, 6)]
    assert found[0].share == 1.0
    assert "'face'" in found[0].message() and "'body'" in found[0].message() and "0 without it" in found[0].message()


def test_share_and_minimum_count_are_respected():
    rows = [{"body", "face"}] * 9 + [{"face"}] + [{"body"}] * 5
    labels = _labels(rows)
    assert [c.name for c in companions(labels, NAMES, share=0.9)] == ["face"]  # 9 of 10
    assert companions(labels, NAMES, share=0.95) == []
    assert companions(labels, NAMES, min_images=11) == []


def test_an_empty_label_matrix_reports_nothing():
    assert companions(np.zeros((0, 4), bool), NAMES) == []


class _Set:
    def __init__(self, rows):
        self.ids = [str(i) for i in range(len(rows))]
        self.num_classes = len(NAMES)
        self._rows = _labels(rows).astype(np.float32)

    def __len__(self):
        return len(self.ids)

    def labels(self, image_id):
        return self._rows[int(image_id)]


@pytest.mark.parametrize("rows", [[{"dog"}, {"cat", "dog"}], []])
def test_label_matrix_reads_the_image_sets_labels(rows):
    matrix = label_matrix(_Set(rows))
    assert matrix.shape == (len(rows), len(NAMES)) and matrix.dtype == bool
    assert np.array_equal(matrix, _labels(rows).reshape(len(rows), len(NAMES)))
