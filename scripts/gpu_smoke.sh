#!/usr/bin/env bash
# GPU smoke test and benchmark of the model executors, for a machine with an NVIDIA GPU.
#
#   bash scripts/gpu_smoke.sh [OUT_DIR]
#
# On the GPU it: (1) builds the tiny models the tests use (no model hub needed), (2) runs
# examples/dag_inference.yaml through `tuiflow run-local` on them with the GPU handed out
# (gpus: 1 per task, so CUDA_VISIBLE_DEVICES is set per model host), checks every task
# completed and the spans carry GPU telemetry (hw.gpu.* from NVML), (3) runs
# benchmarks/gpu_bench.py --json for both executors, and (4) if vllm imports, the vLLM
# tests on a tiny Llama. Everything it measured lands in OUT_DIR (default ./gpu-smoke-out):
# summary.txt, bench.json, and the workflow's `tuiflow trace analyze -f gpu`.
#
# It installs nothing (a GPU node is often offline): torch with CUDA, transformers,
# diffusers, accelerate, nvidia-ml-py and the project itself (`pip install -e '.[test]'`)
# must be importable by `python3`; it says which one is missing and stops.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-smoke-out}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$summary" \
  || { say "no NVIDIA GPU visible (nvidia-smi failed)"; exit 1; }
missing=$(python3 - <<'EOF'
import importlib.util
need = ["torch", "transformers", "diffusers", "accelerate", "pynvml", "tuiflow", "pytest"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  say "missing python modules: $missing (install them first; this script installs nothing)"
  exit 1
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
  2>&1 | tee -a "$summary" || exit 1

export HF_HUB_OFFLINE=1
models=$(mktemp -d)
PYTHONPATH=tests python3 -c "
from support.tiny_models import tiny_llama, tiny_sd
print(tiny_llama('$models/llm'), tiny_sd('$models/sd'))" >/dev/null || { say "could not build the tiny models"; exit 1; }

home=$(mktemp -d)/home
start=$(date +%s.%N)
python3 -m tuiflow run-local examples/dag_inference.yaml --home "$home" --workers 1 --json \
  --set "llm=$models/llm" --set "diffusion=$models/sd" --set steps=4 --set size=64 >"$out/run.json"
rc=$?
say "dag_inference on the GPU: exit $rc in $(python3 -c "import time; print(f'{time.time() - $start:.1f}')") s"
wf=$(python3 -c "import json; print(json.load(open('$out/run.json'))['id'])" 2>/dev/null)
if [ -n "$wf" ]; then
  python3 -m tuiflow trace analyze "$wf" --home "$home" -f gpu >"$out/gpu-analysis.txt" 2>&1
  python3 - "$home" "$wf" <<'EOF' | tee -a "$summary"
import glob, json, sys
home, wf = sys.argv[1], sys.argv[2]
spans = [json.loads(l) for p in glob.glob(f"{home}/**/{wf}/**/spans.jsonl", recursive=True) for l in open(p)]
execute = [s for s in spans if s["name"] == "execute"]
with_gpu = [s for s in execute if "hw.gpu.utilization" in s["attributes"]]
print(f"generation spans: {len(execute)}, with NVML telemetry: {len(with_gpu)}")
for s in with_gpu[:3]:
    a = s["attributes"]
    print(f"  {a.get('gen_ai.request.model', '?')[-12:]}: utilization {a['hw.gpu.utilization']}, memory {a['hw.gpu.memory.usage']}")
EOF
fi

python3 benchmarks/gpu_bench.py --json --llm "$models/llm" --diffusion "$models/sd" >"$out/bench.json" 2>"$out/bench.err"
say "gpu_bench: exit $? (figures in bench.json)"
cat "$out/bench.json" >>"$summary"

if python3 -c "import vllm" 2>/dev/null; then
  python3 -m pytest -q -p no:cacheprovider tests/test_vllm.py 2>&1 | tail -3 | tee -a "$summary"
else
  say "vllm is not importable here: its tests were not run"
fi
