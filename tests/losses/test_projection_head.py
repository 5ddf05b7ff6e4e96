"""ProjectionHead: layout, unit-norm embeddings, selected pixels as the map, single and no pixels in training."""

from __future__ import annotations

import pytest
import torch

from pixcontrast.losses import ProjectionHead


@pytest.fixture
def features():
    return torch.randn(2, 12, 6, 5, generator=torch.Generator().manual_seed(0))


def test_projection_head_unit_norm_and_layout(features):
    head = ProjectionHead(12, proj_dim=7)
    embeddings = head(features)
    assert embeddings.shape == (2, 7, 6, 5)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2, 6, 5))
    first, second = head.layers
    assert (first[0].in_channels, first[0].out_channels, first[0].kernel_size) == (12, 12, (1, 1))
    assert isinstance(first[1], torch.nn.BatchNorm2d)
    assert (second.in_channels, second.out_channels, second.kernel_size) == (12, 7, (1, 1))


def test_projection_head_rejects_bad_dim():
    with pytest.raises(ValueError, match="proj_dim"):
        ProjectionHead(12, proj_dim=0)


def test_projection_head_projects_selected_pixels_like_the_map(features):
    head = ProjectionHead(12, proj_dim=7).train()
    rows = features.permute(0, 2, 3, 1).reshape(-1, 12)
    expected = head(features).permute(0, 2, 3, 1).reshape(-1, 7)
    # training: the BatchNorm statistics of all rows are those of the whole map
    torch.testing.assert_close(head.project_pixels(rows), expected, atol=1e-5, rtol=1e-5)
    head.eval()  # running statistics: any subset of pixels gives the map's embeddings
    subset = [3, 17, 40]
    expected = head(features).permute(0, 2, 3, 1).reshape(-1, 7)[subset]
    torch.testing.assert_close(head.project_pixels(rows[subset]), expected)


def test_projection_head_single_and_no_pixels_in_training():
    head = ProjectionHead(6, proj_dim=4).train()
    head(torch.randn(2, 6, 3, 3))  # moves the running statistics
    one = head.project_pixels(torch.randn(1, 6, requires_grad=True))
    assert one.shape == (1, 4) and torch.isfinite(one).all()
    head.eval()
    pixel = torch.randn(1, 6)
    head.train()
    torch.testing.assert_close(head.project_pixels(pixel), head.eval().project_pixels(pixel))  # running statistics
    head.train()
    none = head.project_pixels(torch.randn(0, 6, requires_grad=True))
    assert none.shape == (0, 4)
    none.sum().backward()
