"""Use the pixel-contrast loss (with a memory bank) in a plain PyTorch loop, without Lightning.

Run: python examples/contrast_loss_plain_torch.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixcontrast.data.synthetic import SyntheticScenesDataset
from pixcontrast.losses import PixelContrastLoss, PixelMemoryBank
from pixcontrast.models import Segmenter

NUM_CLASSES = 8


def main(steps: int = 10) -> None:
    torch.manual_seed(0)
    dataset = SyntheticScenesDataset(num_images=32, num_classes=NUM_CLASSES, image_size=64)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True)
    model = Segmenter(NUM_CLASSES, encoder="resnet18", head="fcn", head_channels=32, proj_dim=32)
    bank = PixelMemoryBank(NUM_CLASSES, dim=32, memory_size=500, pixels_per_image=10)
    contrast = PixelContrastLoss(temperature=0.07, base_temperature=0.07, max_views=1, memory_bank=bank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step, batch in zip(range(steps), loader):
        output = model.forward_train(batch["image"])
        logits = F.interpolate(output.logits, size=batch["mask"].shape[-2:], mode="bilinear")
        ce = F.cross_entropy(logits, batch["mask"], ignore_index=255)
        predictions = output.logits.detach().argmax(1)
        loss = ce + 0.1 * contrast(output.embeddings, batch["mask"], predictions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step}: loss {loss.item():.3f}")


if __name__ == "__main__":
    main()
