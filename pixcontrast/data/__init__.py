"""LightningDataModules and datasets: your own folders, synthetic scenes, Cityscapes, PASCAL-Context, COCO-Stuff,
PiCIE views."""

from pixcontrast.data.base import RawSample, SegmentationDataModule, SegmentationDataset, pad_collate
from pixcontrast.data.cityscapes import CityscapesDataModule
from pixcontrast.data.coco_stuff import COCOStuffDataModule
from pixcontrast.data.folder import FolderSegmentationDataModule
from pixcontrast.data.pascal_context import PascalContextDataModule
from pixcontrast.data.picie_views import PiCIEDataModule
from pixcontrast.data.synthetic import SyntheticScenesDataModule, SyntheticScenesDataset

__all__ = [
    "COCOStuffDataModule",
    "CityscapesDataModule",
    "FolderSegmentationDataModule",
    "PascalContextDataModule",
    "PiCIEDataModule",
    "RawSample",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticScenesDataModule",
    "SyntheticScenesDataset",
    "pad_collate",
]
