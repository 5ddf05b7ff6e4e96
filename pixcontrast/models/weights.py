"""Encoder weights: timm's pretrained weights (cache, else download) and checkpoint files with any wrapper prefix.

``pretrained_weights_file`` is the one place that may touch the network: it returns timm's weights for a model
from the local Hugging Face / torch hub cache and downloads them (as ``timm.create_model(pretrained=True)``
does) only when they are not cached. Offline with nothing cached it fails with the two ways out.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from pixcontrast.models.run_files import missing_checkpoint_hint


def pretrained_weights_file(name: str) -> str:
    """Local path of timm's pretrained weights for ``name`` (``arch`` or ``arch.tag``): cached, else downloaded.

    Downloads go to the Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``, endpoint ``HF_ENDPOINT``) or,
    for weights only published at a URL, to the torch hub cache. Offline (``HF_HUB_OFFLINE=1`` or no network)
    with nothing cached: ``RuntimeError`` naming the model, the cache folder and both fixes.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        architecture = name.split(".")[0]
        tags = timm.list_pretrained(f"{architecture}.*")
        hint = f"pretrained tags: {', '.join(tags[:8])}" if tags else "timm has no pretrained weights for it"
        raise ValueError(f"pretrained=True: no pretrained weights for {name!r} ({hint}); or pass weights_path=<file>")
    cached = cached_pretrained_file(name)
    if cached is not None:
        return cached
    from huggingface_hub import constants

    cache = constants.HF_HUB_CACHE if cfg.hf_hub_id else str(Path(torch.hub.get_dir()) / "checkpoints")
    url = cast(str, cfg.url)  # timm types it as a string or a pair; the configs with weights at a URL give a string
    try:
        return _download_from_hub(cfg.hf_hub_id, cfg.hf_hub_filename) if cfg.hf_hub_id else _download_url(url)
    except OSError as error:  # the hub client's offline / HTTP / missing-file errors and urllib's are all OSErrors
        reason = "HF_HUB_OFFLINE=1 is set" if constants.HF_HUB_OFFLINE else f"{type(error).__name__}: {error}"
        raise RuntimeError(
            f"pretrained=True: the weights of encoder {name!r} are not in the local cache {cache} and could not be "
            f"downloaded ({reason.splitlines()[0]}). Either fetch them on a machine with internet access, "
            f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\", and copy its cache folder "
            f"to {cache} here (or point HF_HOME / HF_HUB_CACHE at the copy); or pass weights_path=<file> with a "
            "local checkpoint of the timm model instead of pretrained=True."
        ) from None


def _download_from_hub(hub_id: str, filename: str | None) -> str:
    """``hf_hub_download`` of a timm hub id (``repo`` or ``repo@revision``): ``model.safetensors``, else ``.bin``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, _, revision = hub_id.partition("@")
    if filename:
        return hf_hub_download(repo_id, filename, revision=revision or None)
    try:
        return hf_hub_download(repo_id, "model.safetensors", revision=revision or None)
    except EntryNotFoundError as error:
        if isinstance(error, LocalEntryNotFoundError):  # offline, not a missing file on the hub
            raise
        return hf_hub_download(repo_id, "pytorch_model.bin", revision=revision or None)


def _download_url(url: str) -> str:
    """Download ``url`` into the torch hub checkpoint folder (where :func:`cached_pretrained_file` looks)."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(path), progress=False)
    return str(path)


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
    if cfg.url:  # a string, as in pretrained_weights_file
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cast(str, cfg.url)).path).name
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
    candidates = {key[: len(key) - len(anchor)] for key in state if key == anchor or key.endswith("." + anchor)}
    # ties (e.g. PiCIE's trained network and its frozen labelling copy) go to the shortest prefix
    ordered = sorted(candidates, key=lambda p: (len(p), p))
    return max(ordered, key=lambda p: sum(p + key in state for key in expected), default="")
