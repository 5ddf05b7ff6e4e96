"""Subclass ContrastiveSegmenter: override one template hook and keep everything else.

Here the subclass gives the decode head and projection head ten times the encoder's learning rate, a common
recipe when the encoder starts from pretrained weights. Run: python examples/subclass_contrastive_segmenter.py
"""

from __future__ import annotations

import lightning as L

from pixcontrast.data import SyntheticScenesDataModule
from pixcontrast.losses import PixelContrastSettings
from pixcontrast.modules import ContrastiveSegmenter


class HeadLRContrastiveSegmenter(ContrastiveSegmenter):
    """ContrastiveSegmenter whose non-encoder parameters use ``head_lr_multiplier`` x the base learning rate."""

    def __init__(self, num_classes: int, *, head_lr_multiplier: float = 10.0, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)

    def parameter_groups(self):
        encoder = [p for p in self.model.encoder.parameters() if p.requires_grad]
        encoder_ids = {id(p) for p in encoder}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in encoder_ids]
        return [
            {"params": encoder},
            {"params": others, "lr": self.hparams.lr * self.hparams.head_lr_multiplier},
        ]


if __name__ == "__main__":
    data = SyntheticScenesDataModule(num_train=32, num_val=8, image_size=64, batch_size=8)
    contrast = PixelContrastSettings(proj_dim=32, warmup_steps=2, max_views=20)
    model = HeadLRContrastiveSegmenter(num_classes=data.num_classes, head_channels=32, contrast=contrast)
    L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False).fit(model, data)
