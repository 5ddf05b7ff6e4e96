"""pretrained=True through the real Hugging Face hub client, against a stand-in hub on 127.0.0.1 (no internet).

Each case runs in a fresh interpreter because huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE
when it is imported; the caches live in tmp_path.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import timm
import torch
from hub_stand_in import HubStandIn
from safetensors.torch import save as save_safetensors

# Builds each encoder named on the command line with pretrained=True; prints one JSON line per name: the path of
# its saved state dict, or the error.
PROBE = """
import json, sys, torch
from pixcontrast.models.backbones import build_encoder
out_dir = sys.argv[1]
for name in sys.argv[2:]:
    try:
        encoder = build_encoder(name, pretrained=True)
    except Exception as error:
        print(json.dumps({"name": name, "error": f"{type(error).__name__}: {error}"}))
    else:
        path = f"{out_dir}/{name}.pt"
        torch.save(encoder.state_dict(), path)
        print(json.dumps({"name": name, "state": path}))
"""
RESNET, VIT = "test_resnet.r160_in1k", "test_vit.r160_in1k"


def run_probe(tmp_path, names, hf_home, **env) -> dict[str, dict]:
    environment = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **env,
    }
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE"):
        if key not in env:
            environment.pop(key, None)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path), *names],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {line["name"]: line for line in lines}


def checkpoint(architecture: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(architecture, pretrained=False).state_dict()


@pytest.fixture(scope="module")
def weights():
    return {RESNET: checkpoint("test_resnet", 0), VIT: checkpoint("test_vit", 1)}


@pytest.mark.slow  # two fresh interpreters importing torch: 12-15 s on 2 cores
def test_download_lands_in_the_model_then_cache_is_used_offline(tmp_path, weights):
    buffer = io.BytesIO()
    torch.save(weights[VIT], buffer)
    files = {  # ResNet as safetensors; the ViT only as pytorch_model.bin (the client falls back to it)
        (f"timm/{RESNET}", "model.safetensors"): save_safetensors(weights[RESNET]),
        (f"timm/{VIT}", "pytorch_model.bin"): buffer.getvalue(),
    }
    hf_home = tmp_path / "hf"
    with HubStandIn(files) as hub:
        results = run_probe(tmp_path, [RESNET, VIT], hf_home, HF_ENDPOINT=hub.endpoint)
    assert ("GET", f"/timm/{RESNET}/resolve/main/model.safetensors") in hub.requests
    assert ("GET", f"/timm/{VIT}/resolve/main/pytorch_model.bin") in hub.requests
    for name in (RESNET, VIT):  # every encoder tensor is the served one (ViT: the pyramid is new, not loaded)
        state = torch.load(results[name]["state"])
        loaded = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
        assert len(loaded) > 10
        for key, value in loaded.items():
            torch.testing.assert_close(value, weights[name][key], msg=f"{name}: {key}")
    assert (hf_home / "hub" / f"models--timm--{RESNET}").is_dir()

    # offline: the cached weights load without a request, an uncached model fails naming the cache and both fixes
    results = run_probe(tmp_path, [VIT, "test_convnext"], hf_home, HF_HUB_OFFLINE="1", HF_ENDPOINT=hub.endpoint)
    torch.testing.assert_close(torch.load(results[VIT]["state"])["model.pos_embed"], weights[VIT]["pos_embed"])
    assert_offline_error(results["test_convnext"]["error"], "test_convnext", hf_home, "HF_HUB_OFFLINE=1")


def assert_offline_error(error: str, name: str, hf_home, reason: str) -> None:
    assert error.startswith("RuntimeError: pretrained=True"), error
    assert f"encoder '{name}'" in error
    assert f"local cache {hf_home / 'hub'} " in error
    assert reason in error
    assert f"timm.create_model('{name}', pretrained=True)" in error
    assert "weights_path=<file>" in error


@pytest.mark.slow  # the hub client retries an unreachable endpoint with backoff (about 25 s)
def test_unreachable_hub_without_cache_fails_clearly(tmp_path):
    with HubStandIn({}) as hub:
        endpoint = hub.endpoint
    hf_home = tmp_path / "hf"  # nothing listens at endpoint any more
    results = run_probe(tmp_path, [RESNET], hf_home, HF_ENDPOINT=endpoint)
    assert_offline_error(results[RESNET]["error"], RESNET, hf_home, "could not be downloaded")
