"""Weakly supervised localization: threshold → largest region → box → IoU, on hand-made maps."""
import pytest
import torch

from vizlib.evaluation import box_iou, localization_accuracy, localize


def two_blobs():
    """A 3×4 blob of 1.0 at rows 1-3, cols 2-5 and a single pixel of 0.9 at (8, 8), on zeros."""
    saliency = torch.zeros(10, 10)
    saliency[1:4, 2:6] = 1.0
    saliency[8, 8] = 0.9
    return saliency


def test_localize_boxes_the_largest_region_not_the_highest_pixel():
    saliency = two_blobs()
    saliency[8, 8] = 5.0          # the peak sets the threshold but its region is one pixel
    saliency[1:4, 2:6] = 2.0      # 2.0 > 0.2 × 5.0
    assert localize(saliency).tolist() == [2, 1, 6, 4]   # (x0, y0, x1, y1), x1 and y1 exclusive


def test_localize_threshold_is_a_fraction_of_the_maximum():
    saliency = two_blobs()
    saliency[0, 0:2] = 0.5        # joins the blob diagonally at (1, 2) only when above the threshold
    assert localize(saliency, threshold=0.4).tolist() == [0, 0, 6, 4]
    assert localize(saliency, threshold=0.6).tolist() == [2, 1, 6, 4]


def test_regions_touching_at_a_corner_are_connected():
    saliency = torch.zeros(5, 5)
    saliency[0, 0] = saliency[1, 1] = saliency[2, 2] = 1.0
    saliency[4, 4] = saliency[4, 3] = 1.0
    assert localize(saliency).tolist() == [0, 0, 3, 3]


def test_localize_accepts_batches_of_maps():
    batch = torch.stack([two_blobs(), two_blobs().flip(1)])[:, None]   # [2, 1, 10, 10]
    assert localize(batch).tolist() == [[2, 1, 6, 4], [4, 1, 8, 4]]


def test_a_map_without_positive_values_has_an_empty_box():
    assert localize(-torch.ones(4, 4)).tolist() == [0, 0, 0, 0]


def test_localize_rejects_a_threshold_outside_the_unit_interval():
    with pytest.raises(ValueError, match="threshold"):
        localize(two_blobs(), threshold=1.5)


def test_box_iou_matches_hand_computed_overlaps():
    boxes = torch.tensor([[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 2, 2], [0, 0, 0, 0]])
    other = torch.tensor([[2, 0, 6, 4], [0, 0, 4, 4], [5, 5, 6, 6], [0, 0, 1, 1]])
    # 8 / (16 + 16 - 8), identical, disjoint, empty.
    torch.testing.assert_close(box_iou(boxes, other), torch.tensor([1 / 3, 1.0, 0.0, 0.0], dtype=torch.float64))


def test_localization_accuracy_counts_boxes_with_iou_above_one_half():
    maps = torch.stack([two_blobs(), two_blobs()])
    truth = torch.tensor([[2, 1, 6, 4], [2, 1, 4, 4]])   # exact, then IoU 6/12 = 0.5, not above
    assert localization_accuracy(maps, truth) == 0.5
