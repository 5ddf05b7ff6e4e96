"""The scene generator behind the synthetic scenes (pure numpy): class textures and shapes, layouts, lighting.

Every class is defined by a texture (gratings of a given frequency and orientation, checkerboards, dots,
rings, noise grain) and, for "thing" classes, a shape; colours are drawn from one distribution shared by
all classes (each class only shifts the hue a little), so colour alone cannot solve the task. A scene is a
few warped Voronoi "stuff" regions covered by occluding "thing" shapes, lit by a random gain and gradient,
with sensor noise. Thin bands along region boundaries and a few random blobs are unlabelled (255).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np

from pixcontrast.data.base import IGNORE_INDEX

MIN_CLASSES = 2
MAX_CLASSES = 16
CLASS_FAMILIES = (0, 1)
_GOLDEN = 0.618033988749895


class Texture(NamedTuple):
    """A class texture: ``kind`` pattern at ``freq`` (cycles or noise cells per pixel) and ``angle`` (deg)."""

    name: str
    kind: str
    freq: float
    angle: float


TEXTURE_KINDS = ("plain", "grating", "checker", "dots", "rings", "noise")
SHAPES = ("ellipse", "box", "triangle", "bar", "cross")

# Background ("stuff") textures, in the order classes are added.
STUFF_TEXTURES = (
    Texture("grain", "noise", 0.5, 0.0),
    Texture("blotch", "noise", 1 / 20, 0.0),
    Texture("waves", "grating", 0.035, 0.0),
    Texture("plain", "plain", 0.0, 0.0),
    Texture("waves_v", "grating", 0.035, 90.0),
    Texture("mottle", "noise", 1 / 6, 0.0),
)
# Object ("thing") textures; some thing classes share a texture and differ only by shape.
THING_TEXTURES = (
    Texture("grating", "grating", 0.16, 90.0),
    Texture("checker", "checker", 0.09, 0.0),
    Texture("dots", "dots", 0.11, 45.0),
    Texture("rings", "rings", 0.12, 0.0),
    Texture("grating_diag", "grating", 0.16, 45.0),
    Texture("checker_diag", "checker", 0.09, 45.0),
    Texture("grating_coarse", "grating", 0.08, 0.0),
)


@dataclass(frozen=True)
class SceneClasses:
    """Per-class definition arrays (length K) of a synthetic label set, built by :func:`scene_classes`."""

    names: tuple[str, ...]
    is_thing: np.ndarray  # K bool
    shape: np.ndarray  # K int, index into SHAPES (-1 for stuff)
    kind: np.ndarray  # K int, index into TEXTURE_KINDS
    freq: np.ndarray  # K float32
    angle: np.ndarray  # K float32, radians
    hue: np.ndarray  # K float32 in [0, 1), the centre of the class's (wide) hue range
    noise_cells: tuple[float, ...]  # distinct noise frequencies used by the label set

    @property
    def num_classes(self) -> int:
        return len(self.names)


def _num_stuff(num_classes: int) -> int:
    return max(1, round(0.375 * num_classes))


def check_num_classes(num_classes: int) -> None:
    """Raise a ``ValueError`` unless ``MIN_CLASSES <= num_classes <= MAX_CLASSES``."""
    if not MIN_CLASSES <= num_classes <= MAX_CLASSES:
        raise ValueError(
            f"num_classes must be between {MIN_CLASSES} and {MAX_CLASSES} for synthetic scenes, got {num_classes}"
        )


def check_class_family(class_family: int) -> None:
    """Raise a ``ValueError`` unless ``class_family`` is one of :data:`CLASS_FAMILIES`."""
    if class_family not in CLASS_FAMILIES:
        raise ValueError(f"class_family must be one of {CLASS_FAMILIES}, got {class_family!r}")


@cache
def scene_classes(num_classes: int, class_family: int = 0) -> SceneClasses:
    """The label set of ``num_classes`` synthetic classes: about 3/8 stuff textures, the rest textured shapes.

    Family 0: thing class ``j`` has shape ``SHAPES[j % 5]`` and texture ``THING_TEXTURES[2 * j // 3]``, so every
    third pair of thing classes shares a texture and only the shape tells them apart. Family 1 draws the same
    kinds of textures and shapes from the other ends of the tables (for up to 8 classes no texture of family 0
    is reused) and shifts the hues: another task built from the same visual vocabulary, e.g. to pretrain an
    encoder for an unsupervised method evaluated on family 0.
    """
    check_num_classes(num_classes)
    check_class_family(class_family)
    num_stuff = _num_stuff(num_classes)
    stuff_offset, thing_offset, shape_offset = 3 * class_family, 3 * class_family, 2 * class_family
    textures = [STUFF_TEXTURES[(i + stuff_offset) % len(STUFF_TEXTURES)] for i in range(num_stuff)]
    names = [texture.name for texture in textures]
    shapes = [-1] * num_stuff
    for j in range(num_classes - num_stuff):
        texture = THING_TEXTURES[(2 * j // 3 + thing_offset) % len(THING_TEXTURES)]
        shape = (j + shape_offset) % len(SHAPES)
        textures.append(texture)
        shapes.append(shape)
        names.append(f"{SHAPES[shape]}_{texture.name}")
    return SceneClasses(
        names=tuple(names),
        is_thing=np.asarray(shapes) >= 0,
        shape=np.asarray(shapes),
        kind=np.asarray([TEXTURE_KINDS.index(t.kind) for t in textures]),
        freq=np.asarray([t.freq for t in textures], dtype=np.float32),
        angle=np.deg2rad(np.asarray([t.angle for t in textures], dtype=np.float32)),
        hue=(((np.arange(num_classes) + 0.5 * class_family) * _GOLDEN) % 1.0).astype(np.float32),
        noise_cells=tuple(sorted({t.freq for t in textures if t.kind == "noise"})),
    )


@lru_cache(maxsize=64)
def _interp_matrix(size: int, cells: int) -> np.ndarray:
    """``size x (cells + 1)`` linear-interpolation weights from a grid of ``cells`` cells to ``size`` pixels."""
    position = (np.arange(size) + 0.5) * (cells / size)
    left = np.minimum(np.floor(position).astype(np.int64), cells - 1)
    weight = (position - left).astype(np.float32)
    matrix = np.zeros((size, cells + 1), dtype=np.float32)
    rows = np.arange(size)
    matrix[rows, left] = 1.0 - weight
    matrix[rows, left + 1] = weight
    return matrix


def smooth_noise(rng: np.random.Generator, height: int, width: int, freq: float) -> np.ndarray:
    """H x W float32 noise with unit variance and about ``freq`` cells per pixel (>= 0.5: independent pixels)."""
    if freq >= 0.5:
        return rng.standard_normal((height, width), dtype=np.float32)
    cells_y, cells_x = max(1, round(freq * height)), max(1, round(freq * width))
    grid = rng.standard_normal((cells_y + 1, cells_x + 1), dtype=np.float32)
    field = _interp_matrix(height, cells_y) @ grid @ _interp_matrix(width, cells_x).T
    return (field - field.mean()) / (field.std() + 1e-6)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """``... x 3`` HSV in [0, 1] -> ``... x 3`` RGB in [0, 1]."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    sector = sector.astype(np.int64) % 6
    channels = [(v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q)]
    return np.stack([np.choose(sector, choice) for choice in channels], axis=-1)


def _shape_distance(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Normalised distance (<= 1 inside) of a shape in its own frame; ``u, v`` already divided by the half-sizes."""
    name = SHAPES[shape]
    if name == "ellipse":
        return np.sqrt(u * u + v * v)
    if name == "box":
        return np.maximum(np.abs(u), np.abs(v))
    if name == "triangle":
        angles = np.pi / 2 + 2 * np.pi * np.arange(3, dtype=np.float32) / 3
        support = np.cos(angles)[:, None, None, None] * u + np.sin(angles)[:, None, None, None] * v
        return 2.0 * support.max(axis=0)
    bar = np.maximum(np.abs(u), np.abs(v) * 2.5)
    if name == "bar":
        return bar
    return np.minimum(bar, np.maximum(np.abs(v), np.abs(u) * 2.5))  # cross: the union of two bars


def _texture(
    kind: np.ndarray,
    freq: np.ndarray,
    angle: np.ndarray,
    phase: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    centre_x: np.ndarray,
    centre_y: np.ndarray,
    noise: np.ndarray,
) -> np.ndarray:
    """Per-pixel texture value in about [-1, 1]; every argument is an H x W map (``phase`` 2 x H x W)."""
    cos, sin = np.cos(angle), np.sin(angle)
    u = 2 * np.pi * freq * (x * cos + y * sin) + phase[0]
    w = 2 * np.pi * freq * (y * cos - x * sin) + phase[1]
    radius = 2 * np.pi * freq * np.hypot(x - centre_x, y - centre_y) + phase[0]
    patterns = (
        np.zeros_like(u),
        np.sin(u),
        np.tanh(4.0 * np.sin(u) * np.sin(w)),
        np.tanh(4.0 * (np.cos(u) + np.cos(w) - 1.0)),
        np.sin(radius),
        np.clip(noise, -2.0, 2.0) * 0.5,
    )
    return np.choose(kind, patterns)


def _stuff_layout(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, stuff_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A warped Voronoi partition into 2-5 regions: (instance map H x W, class per region, region centres R x 2)."""
    height, width = x.shape
    scale = np.sqrt(height * width)
    num_regions = int(rng.integers(2, 6))
    seeds = rng.uniform(0, 1, (num_regions, 2)).astype(np.float32) * np.array([width, height], dtype=np.float32)
    warp = 0.08 * scale
    warped_x = x + warp * smooth_noise(rng, height, width, 3 / scale)
    warped_y = y + warp * smooth_noise(rng, height, width, 3 / scale)
    distance = (warped_x - seeds[:, 0, None, None]) ** 2 + (warped_y - seeds[:, 1, None, None]) ** 2
    return distance.argmin(axis=0), rng.choice(stuff_ids, num_regions), seeds


def _thing_layout(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, thing_ids: np.ndarray, classes: SceneClasses
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-8 rotated shapes painted in order (later ones occlude earlier ones).

    Returns (topmost object per pixel H x W, -1 where none; class per object; object centres N x 2).
    """
    height, width = x.shape
    scale = np.sqrt(height * width)
    count = int(rng.integers(4, 9)) if len(thing_ids) else 0
    object_class = rng.choice(thing_ids, count) if count else np.zeros(0, dtype=np.int64)
    centre = rng.uniform(0.05, 0.95, (count, 2)).astype(np.float32) * np.array([width, height], dtype=np.float32)
    size = rng.uniform(0.11, 0.25, count).astype(np.float32) * scale
    aspect = rng.uniform(0.55, 1.0, count).astype(np.float32)
    rotation = rng.uniform(0, np.pi, count).astype(np.float32)
    dx = x[None] - centre[:, 0, None, None]
    dy = y[None] - centre[:, 1, None, None]
    cos, sin = np.cos(rotation)[:, None, None], np.sin(rotation)[:, None, None]
    u = (dx * cos + dy * sin) / size[:, None, None]
    v = (dy * cos - dx * sin) / (size * aspect)[:, None, None]
    inside = np.zeros((count, height, width), dtype=bool)
    shapes = classes.shape[object_class]
    for shape in np.unique(shapes):
        inside[shapes == shape] = _shape_distance(int(shape), u[shapes == shape], v[shapes == shape]) <= 1.0
    top = (inside * np.arange(1, count + 1)[:, None, None]).max(axis=0, initial=0)
    return top - 1, object_class, centre


def _paint(
    rng: np.random.Generator,
    instance: np.ndarray,
    instance_class: np.ndarray,
    centres: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    classes: SceneClasses,
) -> np.ndarray:
    """H x W x 3 float image: per instance a colour from the shared distribution times its class texture."""
    height, width = x.shape
    count = len(instance_class)
    hue = (classes.hue[instance_class] + rng.uniform(-0.3, 0.3, count)) % 1.0
    hsv = np.stack([hue, rng.uniform(0.15, 0.75, count), rng.uniform(0.3, 0.85, count)], axis=-1)
    colour = hsv_to_rgb(hsv).astype(np.float32)
    amplitude = rng.uniform(0.2, 0.45, count).astype(np.float32)
    freq = classes.freq[instance_class] * rng.uniform(0.88, 1.12, count).astype(np.float32)
    angle = classes.angle[instance_class] + np.deg2rad(rng.normal(0.0, 6.0, count)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (2, count)).astype(np.float32)
    noise_fields = np.stack([smooth_noise(rng, height, width, cells) for cells in classes.noise_cells])
    noise_index = np.searchsorted(np.asarray(classes.noise_cells), classes.freq[instance_class])
    noise_index = noise_index.clip(0, len(noise_fields) - 1)[instance]
    pattern = _texture(
        classes.kind[instance_class][instance],
        freq[instance],
        angle[instance],
        phase[:, instance],
        x,
        y,
        centres[instance, 0],
        centres[instance, 1],
        np.take_along_axis(noise_fields, noise_index[None], axis=0)[0],
    )
    return colour[instance] * (1.0 + amplitude[instance] * pattern)[..., None]


def _light(rng: np.random.Generator, image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Random gain, a linear illumination gradient and Gaussian sensor noise; returns uint8."""
    height, width = x.shape
    light_angle = rng.uniform(0, 2 * np.pi)
    ramp = ((x - width / 2) * np.cos(light_angle) + (y - height / 2) * np.sin(light_angle)) / np.sqrt(height * width)
    image = image * (rng.uniform(0.75, 1.2) * (1.0 + rng.uniform(-0.6, 0.6) * ramp))[..., None]
    image += rng.uniform(0.01, 0.04) * rng.standard_normal(image.shape, dtype=np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _unlabel(rng: np.random.Generator, mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Set a 2-pixel band along class boundaries and 0-2 random blobs to ``IGNORE_INDEX``."""
    height, width = mask.shape
    ignore = np.zeros((height, width), dtype=bool)
    step_x = mask[:, 1:] != mask[:, :-1]
    step_y = mask[1:] != mask[:-1]
    ignore[:, 1:] |= step_x
    ignore[:, :-1] |= step_x
    ignore[1:] |= step_y
    ignore[:-1] |= step_y
    num_blobs = int(rng.integers(0, 3))
    centre = rng.uniform(0, 1, (num_blobs, 2)) * np.array([width, height])
    radius = rng.uniform(0.04, 0.1, num_blobs) * np.sqrt(height * width)
    distance = (x[None] - centre[:, 0, None, None]) ** 2 + (y[None] - centre[:, 1, None, None]) ** 2
    ignore |= (distance <= radius[:, None, None] ** 2).any(axis=0)
    return np.where(ignore, IGNORE_INDEX, mask)


def generate_scene(
    rng: np.random.Generator, height: int, width: int, classes: SceneClasses
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``image`` H x W x 3 uint8 RGB and ``mask`` H x W int64 in ``[0, K)`` with 255 = ignore."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    regions, region_class, region_centre = _stuff_layout(rng, x, y, np.flatnonzero(~classes.is_thing))
    objects, object_class, object_centre = _thing_layout(rng, x, y, np.flatnonzero(classes.is_thing), classes)
    instance = np.where(objects >= 0, len(region_class) + objects, regions)
    instance_class = np.concatenate([region_class, object_class])
    centres = np.concatenate([region_centre, object_centre])
    image = _light(rng, _paint(rng, instance, instance_class, centres, x, y, classes), x, y)
    return image, _unlabel(rng, instance_class[instance].astype(np.int64), x, y)
