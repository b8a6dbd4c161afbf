#!/usr/bin/env bash
# The GPU checks of issue 18 in one go, for a machine with a CUDA GPU (H100/H200): GPU time is minutes, so everything is
# prepared here and runs unattended, most important first, each step under its own time limit.
#
#   bench/gpu.sh                 # .venv with a CUDA torch (make install TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"),
#                                # else the python3 on PATH with the package importable (PYTHONPATH=.)
#   REPEAT=2 bench/gpu.sh        # fewer rounds when the GPU time left is short (REPEAT=2 with Liger: roughly 10 minutes,
#                                # an estimate; steps past a device call's limit are cut, hence the order below)
#   PY=/path/python bench/gpu.sh # another environment
#
# Run once on an H200 (2026-12-04, results in bench/gpu-h200-2026-12-04/) from a bare CUDA machine with torch 2.11 and
# transformers 5.17 but none of datasets, peft, bitsandbytes or liger: their wheels and a model cache holding only the
# packaged model's tokenizer travelled with the tree (the random-init shapes need nothing more), then
#   pip install --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:$PWD LLMOPS_CACHE=$PWD/.gpucache PY=python3 bench/gpu.sh
# That run found 135m bound by per-step overhead (1b at about a quarter of the GPU's bf16 peak), hence the 135m run with
# 32 rows a step and Liger's kernels (fewer a step) below, and ran
# torch.compile's compilation inside the timed steps, hence its warm-up of 5 steps. profile_135m says where a step's time
# goes (host against device); the compile step logs dynamo's recompiles and graph breaks.
#
# Optional packages for the tests (skipped when absent): bitsandbytes (QLoRA), liger-kernel (Liger); vllm for the
# serve benchmark (bench/serve.py, vLLM behind our server; skipped without vllm).
# Results: bench/out/gpu/*.json and *.txt, and a summary at the end. Targets: fine-tuning at 135m, seq 2048, >= 150k useful
# tokens/s and >= 3x the tutorial; at 1b >= 50k useful tokens/s.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
REPEAT=${REPEAT:-3}
OUT=${OUT_DIR:-bench/out/gpu}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run one check under a time limit, keep its output, go on when it fails
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt" | grep -vE "Warning|warnings.warn|it/s\]" | tail -25
  local rc=${PIPESTATUS[0]}
  echo "--- $name: exit $rc after $((SECONDS - t0))s"
  [ "$rc" -eq 0 ] || status=1
}

$PY - <<'EOF' || { echo "no CUDA device or no CUDA build of torch in $PY: nothing to do"; exit 2; }
import torch, sys
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, bf16 {torch.cuda.is_bf16_supported()}")
for m in ("bitsandbytes", "liger_kernel", "vllm"):
    try: __import__(m); print(f"  {m}: yes")
    except Exception: print(f"  {m}: no (its checks are skipped)")
EOF
nvidia-smi --query-gpu=name,memory.total,memory.used,utilization.gpu --format=csv 2>/dev/null || true

# Most important first: a call to the device ends at 10 minutes, and the whole GPU time is 15. The first run (2026-12-04)
# passed the tests and measured ours at 8 rows a step; what it left open comes first here.
# 1. fine-tuning throughput against the targets, ours vs the tutorial (HF Trainer + PEFT, bf16, padded batches of 8),
#    random-init Llama shapes: 135m with 32 packed rows of 2048 tokens a step (the lever against per-step overhead),
#    1b with 8, each with Liger's kernels too where installed; then where a 135m step's time goes (host against device)
FT=(--device cuda --seq-len 2048 --steps 20 --warmup 3 --model "${MODEL:-smollm2-135m-instruct}")  # --model: only its tokenizer
LIGER=$($PY -c "import liger_kernel" 2>/dev/null && echo --methods tutorial,ours,ours-liger)
step finetune_135m_rows32 240 "$PY" bench/finetune.py "${FT[@]}" --rows 32 --shape 135m --repeat "$REPEAT" $LIGER --out "$OUT/finetune_135m_rows32.json"
step finetune_1b 240 "$PY" bench/finetune.py "${FT[@]}" --rows 8 --shape 1b --repeat "$REPEAT" $LIGER --out "$OUT/finetune_1b.json"
step profile_135m 120 "$PY" bench/finetune.py "${FT[@]}" --rows 8 --shape 135m --steps 2 --warmup 3 --profile 3 --repeat 1 --out "$OUT/profile_135m.json"

# 2. the CUDA-only tests: varlen attention, bf16 mixed precision, QLoRA, Liger, torch.compile
step tests 150 "$PY" -m pytest -q -rs tests/test_gpu.py

# 3. 8 packed rows a step at 135m (about the tokens of the tutorial's batch of 8 before its padding), and torch.compile
#    with dynamo's recompiles and graph breaks logged; the packing notebook's varlen check
step finetune_135m 150 "$PY" bench/finetune.py "${FT[@]}" --rows 8 --shape 135m --repeat "$REPEAT" --out "$OUT/finetune_135m.json"
step finetune_135m_compile 150 env TORCH_LOGS=recompiles,graph_breaks "$PY" bench/finetune.py "${FT[@]}" --rows 8 --shape 135m --compile --warmup 5 --repeat 1 --out "$OUT/finetune_135m_compile.json"
NBT=$(dirname "$(command -v "$PY")")/nbdev_test
if [ -x "$NBT" ]; then step packing_notebook 120 "$NBT" --path nbs/07_packing.ipynb; else echo "=== packing_notebook: skipped (no nbdev_test beside $PY)"; fi

# 4. generation: batched in bf16 vs fp32 on the packaged model, where its weights are here
if $PY -c "import sys, pathlib; from llmops_nb.models import resolve_model; sys.exit(not any(pathlib.Path(resolve_model('smollm2-135m-instruct')).glob('*.safetensors')))" 2>/dev/null; then
step generate 150 "$PY" bench/generate.py --device cuda --n 64 --batch-size 16 --no-single --repeat "$REPEAT" --out "$OUT/generate.json"
else echo "=== generate: skipped (no packaged model weights)"; fi

# 5. serving with vLLM, when the serve issue's benchmark is there
if [ -f bench/serve.py ] && $PY -c "import vllm" 2>/dev/null; then
  step serve_vllm 300 "$PY" bench/serve.py --device cuda --engines tutorial,hf,vllm --clients 1,16,64 --n 40 --max-tokens 128 --out "$OUT/serve_vllm.json"
else echo "=== serve_vllm: skipped (no bench/serve.py or no vllm)"; fi

# summary against the targets
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def show(name, target=None):
    p = out/f"{name}.json"
    if not p.exists(): print(f"{name}: no result"); return
    r = json.loads(p.read_text()); tut = r["tutorial"]["tokens_per_second"]
    for m in (k for k in r if k.startswith("ours")):
        tps = r[m]["tokens_per_second"]
        ok = "" if target is None else (" (target met)" if tps >= target and tps / tut >= (3 if "135m" in name else 0) else " (TARGET NOT MET)")
        print(f"{name}: {m} {tps:,.0f} useful tokens/s, tutorial {tut:,.0f}, {tps / tut:.2f}x{ok}")
show("finetune_135m", 150_000); show("finetune_135m_rows32", 150_000); show("finetune_1b", 50_000); show("finetune_135m_compile")
if (p := out/"profile_135m.json").exists():
    r = json.loads(p.read_text())
    for m in ("tutorial", "ours"): print(f"profile_135m {m}, per step: {r[m].get('profile')}")
if (p := out/"finetune_135m_compile.txt").exists():
    t = p.read_text(); print(f"compile: {t.count('Recompiling function')} recompiles, {t.count('Graph break')} graph breaks logged")
g = out/"generate.json"
if g.exists():
    r = json.loads(g.read_text()); print(f"generate: {r['answers_per_s']}; bf16 / fp32 {r.get('speedup_vs_fp32', 0):.2f}x")
EOF
exit $status
