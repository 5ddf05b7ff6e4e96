"""ONNX / TorchScript export of the inference network (encoder + decode head; no projection head)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")
SEGMENTER_KEYS = ("num_classes", "encoder", "head", "aux_head", "output_stride", "head_channels", "dropout")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def export_model(
    network: nn.Module,
    output: str | Path,
    format: str = "onnx",
    example_shape: Sequence[int] = (1, 3, 512, 512),
    opset: int = 18,
    dynamic: bool = True,
) -> Path:
    """Write ``network`` (images B x 3 x H x W -> logits B x K x H x W) to ``output`` and return its path.

    ``torchscript``: ``torch.jit.trace`` on an example input of ``example_shape``; the traced module keeps the
    parameters and accepts other batch sizes and image sizes. ``onnx``: the TorchScript-based ONNX exporter
    (needs the ``onnx`` package, no ``onnxscript``) with input ``images`` and output ``logits``; ``dynamic``
    makes batch, height and width dynamic axes. ViTs need ``opset >= 18`` (the default): they resize their
    position embeddings to the input with antialiased bicubic interpolation, ONNX ``Resize`` with ``antialias``.
    The network is traced in eval mode on its own device; its train/eval mode is restored afterwards.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {FORMATS}")
    if len(example_shape) != 4 or example_shape[1] != 3 or any(int(size) < 1 for size in example_shape):
        raise ValueError(f"example_shape must be (B, 3, H, W) with positive sizes, got {tuple(example_shape)}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(tuple(int(s) for s in example_shape), generator=generator).to(device=device, dtype=dtype)
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # both exporters announce their own deprecation; nothing the user can act on here
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            if format == "torchscript":
                torch.jit.trace(network, example, check_trace=False).save(str(output))
            else:
                _export_onnx(network, example, output, opset, dynamic)
    finally:
        network.train(was_training)
    return output


def _export_onnx(network: nn.Module, example: torch.Tensor, output: Path, opset: int, dynamic: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    options: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamic_axes": {INPUT_NAME: axes, OUTPUT_NAME: axes} if dynamic else None,
    }
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _antialiased_bicubic, 18)
    try:
        torch.onnx.export(network, (example,), str(output), **options)
    except ModuleNotFoundError as error:
        raise RuntimeError(
            f"ONNX export needs the {error.name!r} package: pip install 'pixcontrast[dev]' (or pip install onnx)"
        ) from error
    except torch.onnx.errors.UnsupportedOperatorError as error:
        raise RuntimeError(
            f"ONNX export at opset {opset}: {error}. ViT encoders resize their position embeddings with "
            "antialiased bicubic interpolation, which needs opset >= 18 (the default): pass opset=18 or newer"
        ) from error


def _antialiased_bicubic(g: Any, images: Any, output_size: Any, align_corners: Any, scale_factors: Any) -> Any:
    """ONNX symbolic of ``aten::_upsample_bicubic2d_aa`` (bicubic with ``antialias=True``, align_corners=False).

    PyTorch's kernel is PIL's: cubic coefficient -0.5 and weights renormalised at the border, which ONNX
    ``Resize`` (opset 18) computes with ``cubic_coeff_a=-0.5, exclude_outside=1, antialias=1``.
    """
    batch_and_channels = g.op(
        "Slice",
        g.op("Shape", images),
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([2])),
    )
    sizes = g.op("Concat", batch_and_channels, g.op("Cast", output_size, to_i=7), axis_i=0)  # 7: int64
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op(
        "Resize",
        images,
        empty,
        empty,
        sizes,
        mode_s="cubic",
        antialias_i=1,
        cubic_coeff_a_f=-0.5,
        exclude_outside_i=1,
        coordinate_transformation_mode_s="half_pixel",
    )


def load_inference_network_from_checkpoint(
    ckpt_path: str | Path, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the :class:`~pixcontrast.models.Segmenter` of a Lightning checkpoint and return its inference network.

    The checkpoint's ``hyper_parameters`` (written by ``save_hyperparameters()``) give the Segmenter arguments
    (``num_classes``, ``encoder``, ``head``, ``aux_head``, ``output_stride``, ``head_channels``, ``dropout``; other
    keys are ignored) and its ``state_dict`` the weights under the ``model.`` prefix (training-only projection-head
    weights, which checkpoints of earlier versions keep under ``model.projection_head.``, are skipped). No
    encoder weights are read from elsewhere. Returns the network in eval mode (images -> logits at input size).
    """
    from pixcontrast.models import Segmenter
    from pixcontrast.models.weights import load_checkpoint

    path = Path(ckpt_path)
    checkpoint = load_checkpoint(path, "checkpoint", map_location)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, Mapping) else None
    if not isinstance(hparams, Mapping) or "num_classes" not in hparams or "state_dict" not in checkpoint:
        raise ValueError(
            f"{str(path)!r} is not a pixcontrast Lightning checkpoint: it needs 'hyper_parameters' with the Segmenter "
            "arguments (at least num_classes) and a 'state_dict'"
        )
    prefix = "model."
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix) and not key.startswith(f"{prefix}projection_head.")
    }
    if not state:
        raise ValueError(f"{str(path)!r} has no weights under 'model.' (the module must keep its Segmenter at .model)")
    segmenter = Segmenter(**{key: hparams[key] for key in SEGMENTER_KEYS if key in hparams})
    try:
        segmenter.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(
            f"the weights of {str(path)!r} do not fit the Segmenter built from its hyper_parameters: {error}"
        ) from error
    return segmenter.inference_network().eval()
