"""Label sets of the supported datasets: class names, palettes and checked raw-value -> class-id lookups.

Every :class:`LabelLookup` maps each raw stored label value either to a class id of the label set, to
``IGNORE_INDEX`` (255) when the label set deliberately ignores it (e.g. Cityscapes ids without a train id,
PASCAL-Context background in the 59-class set, 255 itself), or to ``UNKNOWN_LABEL`` when the value has no
meaning in that encoding. Unknown values are errors: a mask holding one raises :class:`LabelValueError` naming
the file, the values and the fix, so a wrong label format never trains silently on nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pixcontrast.data.base import IGNORE_INDEX, default_palette
from pixcontrast.data.io import apply_lut

#: Lookup-table entry of a raw value the label set does not know.
UNKNOWN_LABEL = -1
_SHOWN_VALUES = 8


class LabelValueError(ValueError):
    """A label map holds values that its label set does not know."""


@dataclass(frozen=True)
class LabelSet:
    """A label set: ``names[k]`` and ``palette[k]`` (uint8 RGB) describe class ``k``."""

    names: tuple[str, ...]
    palette: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.names)


def label_value_error(source: str, values: np.ndarray, expected: str, fix: str) -> LabelValueError:
    """The error for ``values`` (unknown raw values, or ``N x 3`` colours) found in label map ``source``."""
    unique = np.unique(values, axis=0 if values.ndim == 2 else None)
    shown = ", ".join(str(tuple(int(c) for c in v)) if np.ndim(v) else str(int(v)) for v in unique[:_SHOWN_VALUES])
    more = f" and {len(unique) - _SHOWN_VALUES} more" if len(unique) > _SHOWN_VALUES else ""
    return LabelValueError(
        f"label map {source!r} holds values the label set does not know: {shown}{more}. Expected {expected}. Fix: {fix}"
    )


@dataclass(frozen=True)
class LabelLookup:
    """Checked mapping of raw label values (``H x W`` integers) to class ids, through one lookup table.

    Attributes:
        table: ``int16`` per raw value: the class id, ``IGNORE_INDEX``, or ``UNKNOWN_LABEL``; raw values past
            its end (and negative ones) are unknown.
        expected: the valid raw values, in words (for the error message).
        fix: what to do about a file holding other values (for the error message).
    """

    table: np.ndarray
    expected: str
    fix: str

    def __call__(self, raw: np.ndarray, source: str) -> np.ndarray:
        """``H x W`` raw values of the file ``source`` -> ``H x W`` int64 class ids (255 = ignore).

        Raises :class:`LabelValueError` when a value is unknown. Cost: one table pass and one min over the map.
        """
        mapped = apply_lut(raw, self.table, outside=UNKNOWN_LABEL)
        if mapped.size and mapped.min() < 0:
            raise label_value_error(source, raw[mapped < 0], self.expected, self.fix)
        return mapped.astype(np.int64)


def build_lut(mapping: dict[int, int], ignored: Iterable[int] = (), size: int = 256) -> np.ndarray:
    """A ``size`` int16 table: ``mapping[raw]`` for its keys, ``IGNORE_INDEX`` for ``ignored`` and for 255,
    ``UNKNOWN_LABEL`` for every other raw value."""
    table = np.full(size, UNKNOWN_LABEL, dtype=np.int16)
    table[[value for value in (*ignored, IGNORE_INDEX) if value < size]] = IGNORE_INDEX
    table[list(mapping)] = list(mapping.values())
    return table


def check_label_set(dataset: str, label_set: str, known: Mapping[str, object]) -> str:
    """Return ``label_set`` as a string, or raise a ValueError naming the valid choices."""
    label_set = str(label_set)
    if label_set not in known:
        raise ValueError(f"{dataset}: unknown label_set {label_set!r}; choose one of {sorted(known)}")
    return label_set


# --------------------------------------------------------------------------------------------------- Cityscapes
# (labelId, name, trainId, colour) of the official Cityscapes label definition, labelIds 0..33.
CITYSCAPES_LABELS: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (0, "unlabeled", 255, (0, 0, 0)),
    (1, "ego vehicle", 255, (0, 0, 0)),
    (2, "rectification border", 255, (0, 0, 0)),
    (3, "out of roi", 255, (0, 0, 0)),
    (4, "static", 255, (0, 0, 0)),
    (5, "dynamic", 255, (111, 74, 0)),
    (6, "ground", 255, (81, 0, 81)),
    (7, "road", 0, (128, 64, 128)),
    (8, "sidewalk", 1, (244, 35, 232)),
    (9, "parking", 255, (250, 170, 160)),
    (10, "rail track", 255, (230, 150, 140)),
    (11, "building", 2, (70, 70, 70)),
    (12, "wall", 3, (102, 102, 156)),
    (13, "fence", 4, (190, 153, 153)),
    (14, "guard rail", 255, (180, 165, 180)),
    (15, "bridge", 255, (150, 100, 100)),
    (16, "tunnel", 255, (150, 120, 90)),
    (17, "pole", 5, (153, 153, 153)),
    (18, "polegroup", 255, (153, 153, 153)),
    (19, "traffic light", 6, (250, 170, 30)),
    (20, "traffic sign", 7, (220, 220, 0)),
    (21, "vegetation", 8, (107, 142, 35)),
    (22, "terrain", 9, (152, 251, 152)),
    (23, "sky", 10, (70, 130, 180)),
    (24, "person", 11, (220, 20, 60)),
    (25, "rider", 12, (255, 0, 0)),
    (26, "car", 13, (0, 0, 142)),
    (27, "truck", 14, (0, 0, 70)),
    (28, "bus", 15, (0, 60, 100)),
    (29, "caravan", 255, (0, 0, 90)),
    (30, "trailer", 255, (0, 0, 110)),
    (31, "train", 16, (0, 80, 100)),
    (32, "motorcycle", 17, (0, 0, 230)),
    (33, "bicycle", 18, (119, 11, 32)),
)

_CS_TRAIN = sorted((t, i) for i, _, t, _ in CITYSCAPES_LABELS if t != IGNORE_INDEX)
_CS_27 = [row for row in CITYSCAPES_LABELS if 7 <= row[0] <= 33]

CITYSCAPES_LABEL_SETS: dict[str, LabelSet] = {
    "19": LabelSet(
        names=tuple(CITYSCAPES_LABELS[i][1] for _, i in _CS_TRAIN),
        palette=np.array([CITYSCAPES_LABELS[i][3] for _, i in _CS_TRAIN], dtype=np.uint8),
    ),
    "27": LabelSet(names=tuple(r[1] for r in _CS_27), palette=np.array([r[3] for r in _CS_27], dtype=np.uint8)),
}
_CS_LABEL_IDS = "Cityscapes labelIds 0..33 (and 255)"
_CS_LABEL_IDS_FIX = (
    "*_gtFine_labelIds.png must hold the label ids of the official gtFine_trainvaltest.zip; maps holding train "
    "ids belong in *_gtFine_labelTrainIds.png"
)
#: labelId -> class id, per label set; every labelId without a class is ignored.
CITYSCAPES_LOOKUPS: dict[str, LabelLookup] = {
    "19": LabelLookup(
        build_lut({i: t for i, _, t, _ in CITYSCAPES_LABELS if t != IGNORE_INDEX}, ignored=range(34)),
        _CS_LABEL_IDS,
        _CS_LABEL_IDS_FIX,
    ),
    "27": LabelLookup(
        build_lut({r[0]: k for k, r in enumerate(_CS_27)}, ignored=range(7)), _CS_LABEL_IDS, _CS_LABEL_IDS_FIX
    ),
}
#: trainId (as in ``*_gtFine_labelTrainIds.png``) -> class id of the "19" set.
CITYSCAPES_TRAIN_ID_LOOKUP = LabelLookup(
    build_lut({k: k for k in range(19)}),
    "Cityscapes train ids 0..18 and 255",
    "this is not a train-id map: rewrite the *_gtFine_labelTrainIds.png files from the label ids with "
    "`pixcontrast prepare cityscapes --root ROOT --overwrite`, or delete them to read *_gtFine_labelIds.png",
)

# ----------------------------------------------------------------------------------------------- PASCAL-Context
#: The 59 classes of the standard PASCAL-Context protocol (alphabetical, as the 459-category labels.txt).
PASCAL_CONTEXT_59_NAMES: tuple[str, ...] = (
    "aeroplane",
    "bag",
    "bed",
    "bedclothes",
    "bench",
    "bicycle",
    "bird",
    "boat",
    "book",
    "bottle",
    "building",
    "bus",
    "cabinet",
    "car",
    "cat",
    "ceiling",
    "chair",
    "cloth",
    "computer",
    "cow",
    "cup",
    "curtain",
    "dog",
    "door",
    "fence",
    "floor",
    "flower",
    "food",
    "grass",
    "ground",
    "horse",
    "keyboard",
    "light",
    "motorbike",
    "mountain",
    "mouse",
    "person",
    "plate",
    "platform",
    "pottedplant",
    "road",
    "rock",
    "sheep",
    "shelves",
    "sidewalk",
    "sign",
    "sky",
    "snow",
    "sofa",
    "table",
    "track",
    "train",
    "tree",
    "truck",
    "tvmonitor",
    "wall",
    "water",
    "window",
    "wood",
)
#: Their raw ids (1-based line numbers of the release's labels.txt), used when no labels.txt is given.
PASCAL_CONTEXT_59_RAW_IDS: tuple[int, ...] = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144, 158,
    159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354, 355, 360, 366,
    368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip

PASCAL_CONTEXT_LABEL_SETS: dict[str, LabelSet] = {
    "59": LabelSet(names=PASCAL_CONTEXT_59_NAMES, palette=default_palette(60)[1:]),
    "60": LabelSet(names=("background", *PASCAL_CONTEXT_59_NAMES), palette=default_palette(60)),
}
_PC_EXPECTED = "prepared PASCAL-Context values 0 (background), 1..59 (classes) and 255"
_PC_FIX = (
    "recreate the label maps with `pixcontrast prepare pascal-context --root ROOT --annotations "
    "trainval.tar.gz --overwrite`"
)
#: Prepared PNG value (0 = background, 1..59 = classes) -> class id, per label set.
PASCAL_CONTEXT_LOOKUPS: dict[str, LabelLookup] = {
    "59": LabelLookup(build_lut({k: k - 1 for k in range(1, 60)}, ignored=[0]), _PC_EXPECTED, _PC_FIX),
    "60": LabelLookup(build_lut({k: k for k in range(60)}), _PC_EXPECTED, _PC_FIX),
}

# ---------------------------------------------------------------------------------------------------- COCO-Stuff
#: The 182 COCO-Stuff names, index = stuffthingmaps value = COCO category id - 1 (11 thing ids are unused).
COCO_STUFF_182_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep",
    "cow", "elephant", "bear", "zebra", "giraffe", "hat", "backpack", "umbrella", "shoe", "eye glasses",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table", "window", "desk",
    "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "blender", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush", "hair brush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
#: stuffthingmaps values of the 11 COCO category ids that no annotation uses (12, 26, 29, 30, 45, 66, 68, 69,
#: 71, 83, 91 minus one).
COCO_STUFF_UNUSED: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
#: First stuff value: values 0..90 are things, 91..181 stuff.
COCO_STUFF_FIRST_STUFF = 91
#: Fine (stuffthingmaps value 0..181) -> coarse supercategory (0..26) table of the unsupervised benchmarks.
COCO_STUFF_FINE_TO_COARSE: tuple[int, ...] = (
    9, 11, 11, 11, 11, 11, 11, 11, 11, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 6, 6, 6,
    10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 5, 5, 5, 5, 5, 5, 5, 5, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3,
    3, 3, 3, 3, 3, 3, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 4, 4, 4, 4, 4, 4, 4, 4, 17, 17, 22, 20, 20, 22, 15,
    25, 16, 13, 12, 12, 17, 17, 23, 15, 15, 17, 15, 21, 15, 25, 13, 13, 13, 13, 13, 22, 26, 14, 14, 15, 22, 21,
    21, 24, 20, 22, 15, 17, 16, 15, 22, 24, 21, 17, 25, 16, 21, 17, 22, 16, 21, 21, 25, 21, 26, 21, 24, 20, 17,
    14, 21, 26, 15, 23, 20, 21, 24, 15, 24, 22, 25, 15, 20, 17, 17, 22, 14, 18, 18, 18, 18, 18, 18, 18, 26, 26,
    19, 19, 24,
)  # fmt: skip
COCO_STUFF_27_NAMES: tuple[str, ...] = (
    "electronic", "appliance", "food-things", "furniture-things", "indoor", "kitchen", "accessory", "animal",
    "outdoor", "person", "sports", "vehicle", "ceiling", "floor", "food-stuff", "furniture-stuff",
    "rawmaterial", "textile", "wall", "window", "building", "ground", "plant", "sky", "solid", "structural",
    "water",
)  # fmt: skip

_COCO_USED = [v for v in range(182) if v not in COCO_STUFF_UNUSED]
COCO_STUFF_LABEL_SETS: dict[str, LabelSet] = {
    "171": LabelSet(names=tuple(COCO_STUFF_182_NAMES[v] for v in _COCO_USED), palette=default_palette(171)),
    "27": LabelSet(names=COCO_STUFF_27_NAMES, palette=default_palette(27)),
}
_COCO_EXPECTED = (
    "stuffthingmaps values 0..181 (COCO category id - 1) and 255 (unlabelled); the values of the 11 unused "
    f"category ids {list(COCO_STUFF_UNUSED)} never occur"
)
_COCO_FIX = (
    "use the official stuffthingmaps_trainval2017.zip (COCO-Stuff-10k: the .mat files, whose 'S' holds 0 for "
    "unlabelled and category ids 1..182); maps holding category ids instead of category id - 1 are off by one"
)
#: stuffthingmaps value (0..181, 255 unlabelled) -> class id, per label set. The unused ids are unknown: real
#: annotations never hold them, so a map that does is in another encoding (typically category ids, off by one).
COCO_STUFF_LOOKUPS: dict[str, LabelLookup] = {
    "171": LabelLookup(build_lut({v: k for k, v in enumerate(_COCO_USED)}), _COCO_EXPECTED, _COCO_FIX),
    "27": LabelLookup(build_lut({v: COCO_STUFF_FINE_TO_COARSE[v] for v in _COCO_USED}), _COCO_EXPECTED, _COCO_FIX),
}


# ----------------------------------------------------------------------------------------------- colour masks
def _level_table(values: np.ndarray) -> tuple[np.ndarray, int]:
    """A 256-entry int32 table: a value's rank among the distinct ``values``, their count for any other value."""
    levels = np.unique(values)
    table = np.full(256, len(levels), dtype=np.int32)
    table[levels] = np.arange(len(levels), dtype=np.int32)
    return table, len(levels)


@dataclass(frozen=True)
class ColourLookup:
    """Checked mapping of colour-coded masks (``H x W x 3`` uint8 RGB) to class ids.

    Vectorised through small tables instead of a search per pixel: each channel value becomes its rank among the
    palette's values of that channel (one OpenCV LUT for the three channels), the (red, green) ranks index the
    distinct (red, green) pairs of the palette, and (pair, blue) indexes the class table, ``UNKNOWN_LABEL`` where
    no palette colour matches.

    Attributes:
        colours: ``N x 3`` uint8, each colour once.
        classes: ``N`` class ids (or ``IGNORE_INDEX``) of the colours.
        expected, fix: as in :class:`LabelLookup`, for the error message.
    """

    colours: np.ndarray
    classes: np.ndarray
    expected: str
    fix: str
    _tables: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        colours = np.asarray(self.colours, dtype=np.uint8).reshape(-1, 3)
        if len(np.unique(colours, axis=0)) != len(colours):
            raise ValueError(f"the mask colours must be distinct, got {colours.tolist()}")
        (red, reds), (green, greens), (blue, blues) = (_level_table(colours[:, c]) for c in range(3))
        channel_table = np.stack([red, green, blue], axis=-1).reshape(256, 1, 3)
        pair = red[colours[:, 0]] * (greens + 1) + green[colours[:, 1]]
        pairs, pair_rank = np.unique(pair, return_inverse=True)
        pair_table = np.full((reds + 1) * (greens + 1), len(pairs), dtype=np.int32)
        pair_table[pairs] = np.arange(len(pairs), dtype=np.int32)
        class_table = np.full((len(pairs) + 1) * (blues + 1), UNKNOWN_LABEL, dtype=np.int16)
        class_table[pair_rank.reshape(-1) * (blues + 1) + blue[colours[:, 2]]] = np.asarray(self.classes)
        object.__setattr__(self, "_tables", (channel_table, greens + 1, pair_table, blues + 1, class_table))

    def __call__(self, rgb: np.ndarray, source: str) -> np.ndarray:
        """``H x W x 3`` colours of the file ``source`` -> ``H x W`` int64 class ids (255 = ignore).

        Raises :class:`LabelValueError` naming the colours that are not in the table.
        """
        import cv2

        if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
            raise LabelValueError(f"label map {source!r} is not an 8-bit RGB image (shape {rgb.shape}); {self.fix}")
        channel_table, green_stride, pair_table, blue_stride, class_table = self._tables
        ranks = cv2.LUT(np.ascontiguousarray(rgb), channel_table)
        pair = pair_table.take(ranks[..., 0] * green_stride + ranks[..., 1])
        mapped = class_table.take(pair * blue_stride + ranks[..., 2])
        if mapped.size and mapped.min() < 0:
            raise label_value_error(source, rgb[mapped < 0], self.expected, self.fix)
        return mapped.astype(np.int64)
