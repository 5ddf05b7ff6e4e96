#!/usr/bin/env bash
# The GPU suite: the `pytest -m gpu` tier and the GPU section of every benchmark, on one CUDA device, within a
# total budget (default 8 minutes), combined into ONE JSON file whose path is printed at the end.
#
#   bash benchmarks/gpu_suite.sh [RESULT.json]
#
# Default result: $OUT/gpu_suite_<time>.json when $OUT is set, else benchmarks/results/gpu_suite_<time>.json.
# Environment: GPU_SUITE_BUDGET_S (total seconds, default 480); PIXCONTRAST_WHEELS (a folder of wheels installed
# first with `pip install --no-index`, for an offline machine that lacks a package below).
#
# Python assumptions, checked first (the suite stops with the list of what is missing):
#   required: torch (with CUDA), torchvision, lightning, torchmetrics, timm, numpy, PIL, cv2 (opencv), scipy,
#             yaml, pytest -- the repository is used in place through PYTHONPATH, nothing is installed;
#   optional: jsonargparse (the DDP-through-the-command test), onnx + onnxruntime (the export test); a missing
#             one skips its test with the reason;
#   not used: faiss and albumentations -- neither the GPU tests nor the benchmarks' GPU sections import them
#             (bench_kmeans runs with --gpu-only, its faiss comparison is the CPU section).
# Steps run in priority order; each gets at most its own cap and what is left of the budget (a step that would
# get less than 15 s is recorded as skipped). bench_datamodule and compare_contrast_synthetic have no GPU section.
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
BUDGET=${GPU_SUITE_BUDGET_S:-480}
START=$(date +%s)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULT=${1:-${OUT:-$ROOT/benchmarks/results}/gpu_suite_$STAMP.json}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT/benchmarks:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}

if [ -n "${PIXCONTRAST_WHEELS:-}" ]; then
    "$PYTHON" -m pip install --no-index --find-links "$PIXCONTRAST_WHEELS" "$PIXCONTRAST_WHEELS"/*.whl \
        >"$WORK/wheels.log" 2>&1 || { echo "installing the wheels of $PIXCONTRAST_WHEELS failed:"; tail -5 "$WORK/wheels.log"; exit 1; }
fi

"$PYTHON" - >"$WORK/environment.json" <<'EOF' || { cat "$WORK/environment.json"; exit 1; }
import importlib, json, os, sys
required = ["torch", "torchvision", "lightning", "torchmetrics", "timm", "numpy", "PIL", "cv2", "scipy", "yaml", "pytest"]
optional = ["jsonargparse", "onnx", "onnxruntime", "faiss", "albumentations"]
found = {}
for name in required + optional:
    try:
        found[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception:
        found[name] = None
missing = [name for name in required if found[name] is None]
import torch
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": sys.version.split()[0], "packages": found, "cuda": torch.version.cuda if cuda else None,
    "device": torch.cuda.get_device_name() if cuda else None, "loadavg": os.getloadavg(),
}))
if missing or not cuda:
    sys.exit(f"gpu_suite: cannot run: {'missing ' + ', '.join(missing) if missing else 'no CUDA device'}")
EOF

# run_step NAME CAP_SECONDS COMMAND...: stdout, stderr, exit status and wall time go to $WORK/NAME.*
run_step() {
    local name=$1 cap=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 10))  # 10 s kept for writing the result
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 15 ]; then
        echo "skipped: budget spent" >"$WORK/$name.skipped"
        echo "[gpu_suite] $name: skipped (budget spent)"
        return
    fi
    echo "[gpu_suite] $name (at most ${limit}s): $*"
    local begin=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
    echo $? >"$WORK/$name.rc"
    echo $(($(date +%s) - begin)) >"$WORK/$name.seconds"
    echo "[gpu_suite] $name: exit $(cat "$WORK/$name.rc") after $(cat "$WORK/$name.seconds")s"
}

run_step pytest_gpu 170 "$PYTHON" -m pytest -m gpu tests/gpu -q -p no:cacheprovider --junitxml="$WORK/pytest_gpu.xml"
run_step bench_kmeans 60 "$PYTHON" benchmarks/bench_kmeans.py --gpu-only
run_step bench_train_step 90 "$PYTHON" benchmarks/bench_train_step.py --repeats 5
run_step bench_pixel_contrast 40 "$PYTHON" benchmarks/bench_pixel_contrast.py --device cuda
run_step bench_memory_contrast 30 "$PYTHON" benchmarks/bench_memory_contrast.py --device cuda
run_step bench_sliding_window 30 "$PYTHON" benchmarks/bench_sliding_window.py
run_step bench_picie_epoch 60 "$PYTHON" benchmarks/bench_picie_epoch.py

mkdir -p "$(dirname "$RESULT")"
"$PYTHON" - "$WORK" "$RESULT" "$BUDGET" "$(($(date +%s) - START))" <<'EOF'
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, result, budget, elapsed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])


def last_json_line(text: str):
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def pytest_summary(path: Path) -> dict:
    suite = ET.parse(path).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        entry = {"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                 "seconds": round(float(case.get("time", 0)), 2)}
        detail = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if detail is not None:
            entry["message"] = (detail.get("message") or detail.text or "")[:2000]
        cases.append(entry)
    counts = {key: sum(c["outcome"] == key for c in cases) for key in ("passed", "failure", "error", "skipped")}
    return {"counts": counts, "tests": cases}


steps = {}
names = sorted({path.name.split(".")[0] for path in work.iterdir() if path.suffix in (".rc", ".skipped")})
for name in names:
    if (work / f"{name}.skipped").exists():
        steps[name] = {"status": "skipped", "reason": (work / f"{name}.skipped").read_text().strip()}
        continue
    rc = int((work / f"{name}.rc").read_text())
    step = {"status": "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "failed"), "exit_code": rc,
            "seconds": int((work / f"{name}.seconds").read_text())}
    if name == "pytest_gpu" and (work / "pytest_gpu.xml").exists():
        step.update(pytest_summary(work / "pytest_gpu.xml"))
    else:
        step["result"] = last_json_line((work / f"{name}.out").read_text())
    if rc != 0:
        step["stderr_tail"] = (work / f"{name}.err").read_text()[-3000:]
    steps[name] = step
summary = {
    "suite": "gpu",
    "environment": json.loads((work / "environment.json").read_text()),
    "budget_seconds": budget,
    "elapsed_seconds": elapsed,
    "all_ok": all(step["status"] == "ok" for step in steps.values()),
    "steps": steps,
}
result.write_text(json.dumps(summary, indent=1))
print(f"[gpu_suite] {sum(s['status'] == 'ok' for s in steps.values())} of {len(steps)} steps ok, {elapsed}s")
EOF
echo "$RESULT"
