import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pixcontrast.metrics import HungarianMatchedSegmentation, hungarian_match, majority_match, scores_from_assignment


def _scores(target, pred, num_classes, num_clusters=None, matching="hungarian"):
    metric = HungarianMatchedSegmentation(num_classes, num_clusters, matching=matching)
    metric.update(torch.tensor(pred), torch.tensor(target))
    return metric, metric.compute()


def test_hand_computed_histogram_with_ignore_pixels():
    target = [[[0, 0, 1, 1], [2, 2, 255, 0]]]
    pred = [[[1, 1, 0, 0], [2, 0, 2, 1]]]
    metric, result = _scores(target, pred, 3)
    assert metric.histogram.tolist() == [[0, 3, 0], [2, 0, 0], [1, 0, 1]]
    assert result["assignment"].tolist() == [1, 0, 2]
    assert result["pixel_accuracy"].item() == pytest.approx(6 / 7)
    assert result["per_class_iou"].tolist() == pytest.approx([1.0, 2 / 3, 1 / 2])
    assert result["miou"].item() == pytest.approx(13 / 18)


def test_permuted_perfect_clustering_scores_one():
    target = torch.randint(0, 4, (2, 5, 6), generator=torch.Generator().manual_seed(0))
    pred = torch.tensor([2, 0, 3, 1])[target]
    _, result = _scores(target.tolist(), pred.tolist(), 4)
    assert result["pixel_accuracy"].item() == 1.0
    assert result["miou"].item() == 1.0
    assert result["assignment"].tolist() == [1, 3, 0, 2]


def test_more_clusters_than_classes_one_to_one_leaves_a_cluster_unmatched():
    target = [[[0, 0, 0, 1, 1, 2, 2]]]
    pred = [[[0, 0, 3, 1, 1, 2, 2]]]
    _, result = _scores(target, pred, 3, num_clusters=4)
    assert result["assignment"].tolist() == [0, 1, 2, -1]
    assert result["pixel_accuracy"].item() == pytest.approx(6 / 7)
    assert result["per_class_iou"].tolist() == pytest.approx([2 / 3, 1.0, 1.0])
    assert result["miou"].item() == pytest.approx(8 / 9)


def test_more_clusters_than_classes_many_to_one():
    target = [[[0, 0, 0, 1, 1, 2, 2]]]
    pred = [[[0, 0, 3, 1, 1, 2, 2]]]
    _, result = _scores(target, pred, 3, num_clusters=4, matching="majority")
    assert result["assignment"].tolist() == [0, 1, 2, 0]
    assert result["pixel_accuracy"].item() == 1.0
    assert result["miou"].item() == 1.0


def test_fewer_clusters_than_classes_leaves_a_class_unmatched():
    _, result = _scores([[[0, 0, 1, 1, 2]]], [[[0, 0, 1, 1, 1]]], 3, num_clusters=2)
    assert result["assignment"].tolist() == [0, 1]
    assert result["pixel_accuracy"].item() == pytest.approx(4 / 5)
    assert result["per_class_iou"].tolist() == pytest.approx([1.0, 2 / 3, 0.0])
    assert result["miou"].item() == pytest.approx(5 / 9)


def test_class_absent_from_labels_and_predictions_is_left_out_of_the_mean():
    _, result = _scores([[[0, 1, 255]]], [[[1, 0, 2]]], 3)
    assert math.isnan(result["per_class_iou"][2].item())
    assert result["miou"].item() == 1.0
    assert result["pixel_accuracy"].item() == 1.0


def test_float_scores_are_upsampled_to_the_label_size():
    scores = torch.zeros(1, 2, 2, 2)
    scores[0, 1, :, 0] = 1.0  # left half cluster 1
    scores[0, 0, :, 1] = 1.0  # right half cluster 0
    target = torch.tensor([[[0, 0, 1, 1]] * 4])
    metric = HungarianMatchedSegmentation(2)
    metric.update(scores, target)
    assert metric.histogram.tolist() == [[0, 8], [8, 0]]


def test_hungarian_match_and_majority_match_on_rectangular_histograms():
    histogram = torch.tensor([[5, 0, 4], [0, 3, 0]])
    assert hungarian_match(histogram).tolist() == [0, 1, -1]
    assert majority_match(histogram).tolist() == [0, 1, 0]
    assert majority_match(torch.tensor([[1, 0], [0, 0]])).tolist() == [0, -1]
    scores = scores_from_assignment(histogram, torch.tensor([0, 1, -1]))
    assert scores["pixel_accuracy"].item() == pytest.approx(8 / 12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 3, "matching": "greedy"}, "matching"),
        ({"num_classes": 3, "ignore_index": 1}, "ignore_index"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HungarianMatchedSegmentation(**kwargs)


def test_bad_inputs_are_rejected():
    metric = HungarianMatchedSegmentation(3)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 7]]]))
    with pytest.raises(ValueError, match="cluster ids"):
        metric.update(torch.tensor([[[0, 5]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.tensor([[[0, 1, 2]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="num_clusters"):
        metric.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="histogram"):
        hungarian_match(torch.zeros(3))


def _batches():
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (4, 6, 7), generator=generator)
    target[:, 0] = 255
    pred = torch.randint(0, 6, (4, 6, 7), generator=generator)
    pred[target == 2] = 5  # a pure cluster, so the matching is not trivial
    return target, pred


def _ddp_worker(rank: int, world_size: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        target, pred = _batches()
        metric = HungarianMatchedSegmentation(4, 6)
        for index in range(rank, len(target), world_size):
            metric.update(pred[index : index + 1], target[index : index + 1])
        result = metric.compute()
        results[rank] = {key: value.tolist() for key, value in result.items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_two_process_ddp_equals_single_process(tmp_path):
    target, pred = _batches()
    single = HungarianMatchedSegmentation(4, 6)
    single.update(pred, target)
    expected = {key: value.tolist() for key, value in single.compute().items()}
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        per_rank = [results[0], results[1]]
    for result in per_rank:
        assert result["assignment"] == expected["assignment"]
        for key in ("pixel_accuracy", "miou"):
            assert result[key] == pytest.approx(expected[key])
        assert result["per_class_iou"] == pytest.approx(expected["per_class_iou"])
