"""Add the pixel-contrast term to your own LightningModule: a torchvision DeepLabV3 (MobileNetV3 backbone).

The module knows nothing of pixcontrast's models: ``PixelContrast`` takes the backbone's feature map, the masks
and the logits, and owns the projection head, the warm-up, the sampled projection and the DDP rule.
Run: python examples/add_contrast_to_your_module.py  (trains one short epoch on the synthetic scenes)
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

from pixcontrast.data import SyntheticScenesDataModule
from pixcontrast.losses import PixelContrast


class DeepLabV3WithContrast(L.LightningModule):
    """torchvision's DeepLabV3 trained with cross-entropy + 0.1 x pixel contrast on its backbone's features."""

    def __init__(self, num_classes: int, warmup_steps: int = 2) -> None:
        super().__init__()
        self.net = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
        self.contrast = PixelContrast(  # 960 = channels of the MobileNetV3 map the DeepLabV3 head reads
            960, num_classes, proj_dim=64, loss_weight=0.1, warmup_steps=warmup_steps, max_views=8
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)["out"]  # B x K x H x W (the projection head never runs here)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        features = self.net.backbone(batch["image"])["out"]  # B x 960 x H/16 x W/16
        logits = self.net.classifier(features)  # B x K x H/16 x W/16
        upsampled = F.interpolate(logits, size=batch["mask"].shape[-2:], mode="bilinear", align_corners=False)
        ce = F.cross_entropy(upsampled, batch["mask"], ignore_index=255)
        contrast = self.contrast(features, batch["mask"], logits, self.global_step)  # 0 during the warm-up
        self.log_dict({"train/ce": ce, "train/contrast": contrast}, prog_bar=True)
        return ce + contrast

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


if __name__ == "__main__":
    data = SyntheticScenesDataModule(num_train=12, num_val=4, image_size=128, batch_size=4)
    model = DeepLabV3WithContrast(num_classes=data.num_classes, warmup_steps=1)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.fit(model, datamodule=data)
    assert trainer.callback_metrics["train/contrast"] > 0  # the term ran after the warm-up
