"""Local encoder weights: timm's download cache lookup and checkpoint files with any wrapper prefix.

Nothing here touches the network: weights come from a file the user names or from a cache already on disk.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from pixcontrast.models.run_files import missing_checkpoint_hint


def cached_pretrained_file(name: str) -> str | None:
    """Path of timm's pretrained weights for ``name`` if they are in a local cache, else None (no network)."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return str(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in filenames:
            path = try_to_load_from_cache(cfg.hf_hub_id, filename)
            if isinstance(path, str):
                return path
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return str(path)
    return None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file (``.safetensors`` or a torch file), unwrapping ``state_dict`` / ``model``."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors.torch import load_file

        return load_file(str(path))
    content: Any = load_checkpoint(path, "weights_path")
    while isinstance(content, Mapping):
        nested = next((content[key] for key in ("state_dict", "model") if isinstance(content.get(key), Mapping)), None)
        if nested is None:
            break
        content = nested
    if not isinstance(content, Mapping):
        raise ValueError(f"weights_path {str(path)!r} holds a {type(content).__name__}, not a state dict")
    return {key: value for key, value in content.items() if isinstance(value, Tensor)}


def load_checkpoint(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load`` of tensors and plain containers only (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist or is not a file{missing_checkpoint_hint(path)}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise RuntimeError(
            f"{what} {str(path)!r} holds pickled Python objects besides tensors, which are not loaded for safety; "
            f"save a state dict instead (torch.save(model.state_dict(), ...)). Details: {error}"
        ) from error


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the tensors of checkpoint ``path`` into ``model``.

    Checkpoint keys may carry any wrapper prefix (``module.``, ``model.``, ``backbone.``, a Segmenter's
    ``network.encoder.model.``, ...): the prefix that matches the most of the model's keys is used, so the
    ``last.ckpt`` of a pixcontrast module gives its encoder. Keys the model lacks (a classifier, other heads)
    are ignored; every model tensor must be present with its shape (a strict load of the encoder).
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    prefix = _best_prefix(state, expected)
    mapped = {key: state[prefix + key] for key in expected if prefix + key in state}
    missing = [key for key in expected if key not in mapped and not key.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(
            f"weights_path {str(path)!r} does not fit the encoder: {len(missing)} of {len(expected)} tensors "
            f"missing (e.g. {missing[:3]}); it must hold this encoder's weights: the timm model's state dict, or "
            "a checkpoint of a pixcontrast module (SegmentationModule, ContrastiveSegmenter, PiCIE) built with "
            "the same encoder"
        )
    wrong = [key for key, value in mapped.items() if value.shape != expected[key].shape]
    if wrong:
        key = wrong[0]
        raise RuntimeError(
            f"weights_path {str(path)!r} does not fit the encoder: {len(wrong)} tensors have other shapes, e.g. "
            f"{key!r} {tuple(mapped[key].shape)} vs {tuple(expected[key].shape)}; was it saved from another model?"
        )
    model.load_state_dict(mapped, strict=False)


def _best_prefix(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str:
    """The key prefix of ``state`` under which most of the ``expected`` keys are found ("" if none fits)."""
    anchor = next((key for key in expected if not key.endswith("num_batches_tracked")), None)
    if anchor is None:
        return ""
    candidates = {
        key[: len(key) - len(anchor)]
        for key in state
        if key == anchor or key.endswith("." + anchor)
    }
    # ties (e.g. PiCIE's trained network and its frozen labelling copy) go to the shortest prefix
    ordered = sorted(candidates, key=lambda p: (len(p), p))
    return max(ordered, key=lambda p: sum(p + key in state for key in expected), default="")
