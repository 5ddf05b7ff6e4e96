import pytest
import torch

from pixcontrast.cluster import UniformSubsample


def test_keeps_the_smallest_keys_whatever_the_batching():
    rows = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    keys = torch.rand(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = rows[keys.argsort()[:10]]
    for sizes in ([100], [3, 40, 57], [1] * 100):
        sampler = UniformSubsample(10)
        for part_rows, part_keys in zip(rows.split(sizes), keys.split(sizes), strict=True):
            sampler.add(part_rows, part_keys)
        assert sampler.seen == 100
        assert torch.equal(sampler.result(), expected)


def test_uniform_and_bounded():
    hits = torch.zeros(50)
    for seed in range(200):
        sampler = UniformSubsample(5, seed=seed)
        for part in torch.arange(50.0).unsqueeze(1).split(7):
            sampler.add(part)
        result = sampler.result()
        assert result.shape == (5, 1) and result.unique().numel() == 5
        hits[result.long().squeeze(1)] += 1
    assert hits.min() > 3 and hits.max() < 45  # expected 20 per row


def test_errors():
    with pytest.raises(ValueError, match="capacity"):
        UniformSubsample(0)
    with pytest.raises(RuntimeError, match="before any rows"):
        UniformSubsample(3).result()
