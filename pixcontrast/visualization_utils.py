"""Pictures of segmentations as uint8 arrays: overlays, image grids, confusion matrices, embedding scatters.

Pure numpy/torch/PIL/matplotlib; no Lightning. Every function returns an ``H x W x 3`` uint8 RGB array that
can be saved as PNG or sent to a logger. matplotlib is imported inside the functions that use it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

GRID_PANELS = ("image", "ground truth", "prediction", "errors")
HEADER_HEIGHT = 16
MIN_TILE_WIDTH = 128
_IGNORE_COLOUR = np.array([0, 0, 0], dtype=np.uint8)
_ERROR_COLOUR = np.array([255, 0, 0], dtype=np.float32)


def _labelled(labels: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    return (labels >= 0) & (labels < num_classes) & (labels != ignore_index)


def colourize(labels: np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``... x H x W`` integer labels -> ``... x H x W x 3`` uint8 colours; ignore and out-of-range ids are black."""
    table = np.concatenate([palette.astype(np.uint8), _IGNORE_COLOUR[None]], axis=0)
    return table[np.where(_labelled(labels, len(palette), ignore_index), labels, len(palette))]


def overlay(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.55, ignore_index: int = 255
) -> np.ndarray:
    """Blend label colours over ``... x H x W x 3`` uint8 images; ignored and out-of-range pixels keep the image."""
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colourize(labels, palette, ignore_index)
    labelled = _labelled(labels, len(palette), ignore_index)[..., None]
    return np.where(labelled, blended.round(), image).astype(np.uint8)


def error_map(image: np.ndarray, target: np.ndarray, prediction: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """The image dimmed to grey with wrong pixels in red; ignored pixels are darker still."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True).repeat(3, axis=-1)
    dimmed = np.where((target == ignore_index)[..., None], grey * 0.25, grey * 0.6)
    wrong = ((prediction != target) & (target != ignore_index))[..., None]
    return np.where(wrong, _ERROR_COLOUR, dimmed).round().astype(np.uint8)


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw, text: str, width: int, font) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-1]
    return text


def legend_strip(class_names: Sequence[str], palette: np.ndarray, width: int, entry_width: int = 128) -> np.ndarray:
    """A ``h x width x 3`` white strip with one colour swatch and name per class, ``width // entry_width`` per row."""
    from PIL import Image, ImageDraw

    per_row = max(1, width // entry_width)
    rows = -(-len(class_names) // per_row)
    row_height = 16
    strip = Image.new("RGB", (width, rows * row_height + 4), "white")
    draw = ImageDraw.Draw(strip)
    font = _font()
    for k, name in enumerate(class_names):
        x, y = (k % per_row) * entry_width + 4, (k // per_row) * row_height + 3
        draw.rectangle([x, y, x + 11, y + 11], fill=tuple(int(c) for c in palette[k]), outline="black")
        draw.text((x + 15, y - 1), _fit_text(draw, f"{k}: {name}", entry_width - 20, font), fill="black", font=font)
    return np.asarray(strip)


def _header(titles: Sequence[str], tile_width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    header = Image.new("RGB", (tile_width * len(titles), HEADER_HEIGHT), "white")
    draw = ImageDraw.Draw(header)
    font = _font()
    for k, title in enumerate(titles):
        draw.text((k * tile_width + 4, 2), _fit_text(draw, title, tile_width - 8, font), fill="black", font=font)
    return np.asarray(header)


def tile_scale(width: int) -> int:
    """Integer nearest-neighbour zoom applied to tiles narrower than ``MIN_TILE_WIDTH`` pixels."""
    return max(1, -(-MIN_TILE_WIDTH // width))


def segmentation_grid(
    images: np.ndarray,
    targets: np.ndarray,
    predictions: np.ndarray,
    palette: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int = 255,
) -> np.ndarray:
    """One row per image: image | ground-truth overlay | prediction overlay | error map, then a class legend.

    Args:
        images: ``B x H x W x 3`` uint8 RGB.
        targets: ``B x H x W`` int ground truth (``ignore_index`` = unlabelled).
        predictions: ``B x H x W`` int predicted class ids (ids outside ``[0, K)`` are drawn uncoloured and
            count as errors).
        palette: ``K x 3`` uint8 class colours; ``class_names`` K names for the legend.

    Returns:
        ``(16 + B * H * s + legend) x (4 * W * s) x 3`` uint8, with ``s = tile_scale(W)``.
    """
    scale = tile_scale(images.shape[2])
    truth = overlay(images, targets, palette, ignore_index=ignore_index)
    predicted = overlay(images, predictions, palette, ignore_index=ignore_index)
    errors = error_map(images, targets, predictions, ignore_index)
    rows = np.concatenate([images, truth, predicted, errors], axis=2)  # B x H x 4W x 3
    body = rows.reshape(-1, *rows.shape[2:]).repeat(scale, axis=0).repeat(scale, axis=1)
    return np.concatenate(
        [_header(GRID_PANELS, images.shape[2] * scale), body, legend_strip(class_names, palette, body.shape[1])],
        axis=0,
    )


def _figure_to_array(figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def confusion_figure(confusion: torch.Tensor | np.ndarray, class_names: Sequence[str], title: str = "") -> np.ndarray:
    """Row-normalised ``K x K`` confusion matrix (rows: ground truth, columns: prediction) as an RGB image."""
    from matplotlib.figure import Figure

    counts = np.asarray(torch.as_tensor(confusion).double().cpu())
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.45 * len(class_names)
    figure = Figure(figsize=(size, size), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    shown = axes.imshow(rates, vmin=0.0, vmax=1.0, cmap="Blues")
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=60, ha="right", fontsize=8)
    axes.set_yticks(ticks, class_names, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    if len(class_names) <= 20:
        for (row, col), rate in np.ndenumerate(rates):
            axes.text(
                col, row, f"{rate:.2f}", ha="center", va="center", fontsize=6, color="white" if rate > 0.5 else "black"
            )
    figure.colorbar(shown, ax=axes, fraction=0.046)
    axes.set_title(title)
    return _figure_to_array(figure)


def project_2d(points: torch.Tensor, method: str = "pca", seed: int = 0) -> torch.Tensor:
    """``N x D`` points -> ``N x 2``: PCA (``torch.pca_lowrank``), or t-SNE / UMAP when scikit-learn / umap-learn
    is installed."""
    points = points.detach().float().cpu()
    if method == "pca":
        centred = points - points.mean(dim=0, keepdim=True)
        with torch.random.fork_rng(devices=[]):  # pca_lowrank draws from the global CPU generator
            torch.manual_seed(seed)
            _, _, components = torch.pca_lowrank(centred, q=min(2, *points.shape), center=False)
        projected = centred @ components
        return torch.nn.functional.pad(projected, (0, 2 - projected.shape[1]))
    array = points.numpy()
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, len(array) - 1) / 3))
        return torch.from_numpy(TSNE(2, perplexity=perplexity, random_state=seed).fit_transform(array))
    if method == "umap":
        import umap

        return torch.from_numpy(umap.UMAP(n_components=2, random_state=seed).fit_transform(array))
    raise ValueError(f"unknown projection {method!r}; use 'pca', 'tsne' or 'umap'")


def embedding_figure(
    points: torch.Tensor | np.ndarray,
    groups: torch.Tensor | np.ndarray,
    colours: np.ndarray,
    names: Sequence[str],
    title: str = "",
) -> np.ndarray:
    """Scatter of ``N x 2`` points coloured by group; ``colours`` and ``names`` are indexed by group id."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    xy = np.asarray(torch.as_tensor(points).float().cpu())
    group = np.asarray(torch.as_tensor(groups).cpu())
    figure = Figure(figsize=(6.0, 5.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(xy[:, 0], xy[:, 1], s=4, c=colours[group] / 255.0, linewidths=0)
    present = np.unique(group)
    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=5, color=colours[g] / 255.0, label=names[g])
        for g in present
    ]
    axes.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title)
    return _figure_to_array(figure)
