"""Use the pixel-contrast term (with a memory bank) in a plain PyTorch loop, without a Lightning Trainer.

Run: python examples/contrast_loss_plain_torch.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixcontrast.data.synthetic import SyntheticScenesDataset
from pixcontrast.losses import PixelContrast
from pixcontrast.models import Segmenter

NUM_CLASSES = 8


def main(steps: int = 10) -> None:
    torch.manual_seed(0)
    dataset = SyntheticScenesDataset(num_images=32, num_classes=NUM_CLASSES, image_size=64)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
    model = Segmenter(NUM_CLASSES, encoder="resnet18", head="fcn", head_channels=32)
    # the projection head (32-d embeddings) reads the map the decode head reads; a memory bank of 500 rows per queue
    contrast = PixelContrast(
        model.encoder.head_channels,
        NUM_CLASSES,
        proj_dim=32,
        loss_weight=0.1,
        temperature=0.07,
        base_temperature=0.07,
        max_views=1,
        memory_size=500,
    )
    optimizer = torch.optim.AdamW([*model.parameters(), *contrast.parameters()], lr=1e-3)
    for step, batch in zip(range(steps), loader, strict=False):
        output = model.forward_train(batch["image"])
        logits = F.interpolate(output.logits, size=batch["mask"].shape[-2:], mode="bilinear")
        ce = F.cross_entropy(logits, batch["mask"], ignore_index=255)
        loss = ce + contrast(output.features, batch["mask"], output.logits, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
