"""Anchor k-means with the 1 - IoU distance on box sizes drawn around known anchors."""

from __future__ import annotations

import unittest

import numpy as np
from parameterized import parameterized

from breastseg.workflows.two_stage.detection import box_sizes, kmeans_anchors, mean_best_iou, size_iou

# nine well separated shapes, increasing area: 80, 280, 450, 1500, 2200, 6000, 8800, 28500, 84000
TRUE_ANCHORS = np.array(
    [[8, 10], [14, 20], [25, 18], [30, 50], [55, 40], [60, 100], [110, 80], [150, 190], [300, 280]], dtype=float
)


def clustered_sizes(per_cluster: int = 20, jitter: float = 0.03, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Sizes jittered around TRUE_ANCHORS (shuffled) and the mean size of each cluster."""
    rng = np.random.default_rng(seed)
    clusters = [anchor * rng.uniform(1 - jitter, 1 + jitter, size=(per_cluster, 2)) for anchor in TRUE_ANCHORS]
    sizes = np.concatenate(clusters)
    return sizes[rng.permutation(len(sizes))], np.array([c.mean(axis=0) for c in clusters])


class TestAnchorKMeans(unittest.TestCase):
    def test_size_iou_by_hand(self):
        iou = size_iou(np.array([[10.0, 20.0]]), np.array([[10.0, 20.0], [20.0, 10.0], [5.0, 5.0]]))
        np.testing.assert_allclose(iou, [[1.0, 100 / 300, 25 / 200]])

    def test_recovers_cluster_means_sorted_by_area(self):
        sizes, cluster_means = clustered_sizes()
        anchors = kmeans_anchors(sizes, num_anchors=9, seed=0)
        self.assertEqual(anchors.shape, (9, 2))
        np.testing.assert_allclose(anchors, cluster_means)  # each centroid is the mean of exactly its cluster
        self.assertTrue(np.all(np.diff(anchors.prod(axis=1)) > 0))
        self.assertGreater(mean_best_iou(sizes, anchors), 0.9)
        self.assertLess(mean_best_iou(sizes, TRUE_ANCHORS[::-1][:3]), 0.5)

    def test_deterministic_by_seed(self):
        sizes = np.random.default_rng(3).uniform(5, 200, size=(200, 2))  # no cluster structure: seed matters
        first = kmeans_anchors(sizes, seed=11)
        np.testing.assert_array_equal(first, kmeans_anchors(sizes, seed=11))
        self.assertFalse(np.array_equal(first, kmeans_anchors(sizes, seed=12)))
        self.assertTrue(np.all(np.diff(first.prod(axis=1)) >= 0))

    def test_fewer_anchors(self):
        sizes, _ = clustered_sizes(per_cluster=5)
        anchors = kmeans_anchors(sizes, num_anchors=3, seed=1)
        self.assertEqual(anchors.shape, (3, 2))
        self.assertTrue(np.all(np.diff(anchors.prod(axis=1)) > 0))

    def test_box_sizes_scale_to_the_network_input(self):
        boxes = [[100, 200, 300, 600], [0, 0, 64, 32]]
        np.testing.assert_allclose(box_sizes(boxes, scale_x=0.25, scale_y=0.5), [[50, 200], [16, 16]])

    @parameterized.expand(
        [
            [lambda: box_sizes([[10, 10, 5, 20]]), r"box 0 \[10.0, 10.0, 5.0, 20.0\] is empty or inverted"],
            [lambda: box_sizes([[1, 2, 3]]), r"\(M, 4\)"],
            [lambda: box_sizes([[0, 0, 1, 1]], scale_x=0), "scales must be positive"],
            [lambda: kmeans_anchors(np.ones((20, 2))), "at least as many distinct box sizes; got 1"],
            [lambda: kmeans_anchors(np.array([[1.0, -2.0]] * 9)), "positive"],
            [lambda: kmeans_anchors(np.ones((3, 3))), r"\(M, 2\)"],
        ]
    )
    def test_bad_input(self, call, message):
        with self.assertRaisesRegex(ValueError, message):
            call()


if __name__ == "__main__":
    unittest.main()
