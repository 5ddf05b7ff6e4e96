"""Add the pixel-contrast term to your own SegmentationModule subclass in a few lines.

Run: python examples/add_contrast_to_your_module.py  (trains one short epoch on the synthetic scenes)
"""

from __future__ import annotations

import lightning as L

from pixcontrast.data import SyntheticScenesDataModule
from pixcontrast.losses import PixelContrastLoss
from pixcontrast.models import Segmenter
from pixcontrast.modules import SegmentationModule


class MySegmenter(SegmentationModule):
    """Your own module: the same segmenter, plus a projection head and the contrast term."""

    def configure_models(self) -> None:
        self.model = Segmenter(**self.segmenter_kwargs(), proj_dim=64)

    def configure_losses(self) -> None:
        self.contrast = PixelContrastLoss(temperature=0.1, max_samples=512, max_views=50)

    def compute_losses(self, batch):
        output = self.model.forward_train(batch["image"], embed=False)  # the loss projects the pixels it samples
        losses = self.supervised_losses(output, batch["mask"])
        predictions = output.logits.detach().argmax(dim=1)  # same resolution as the features
        project = self.model.projection_head.project_pixels
        losses["contrast"] = self.contrast(output.features, batch["mask"], predictions, projection=project)
        losses["loss"] = losses["loss"] + 0.1 * losses["contrast"]
        return losses


if __name__ == "__main__":
    data = SyntheticScenesDataModule(num_train=32, num_val=8, image_size=64, batch_size=8)
    model = MySegmenter(num_classes=data.num_classes, head_channels=32, optimizer="adamw", lr=1e-3)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False).fit(model, data)
