#!/usr/bin/env bash
# The GPU path's figures (issue 16) in one command on a GPU host, with the same work on
# that host's CPU cores as the baseline of the same run:
#
#   bench/gpu_check_prepare.sh [--wheels]   # first, where Spark runs: fills .gpu/
#   bench/gpu_check.sh OUT_DIR              # then on the GPU host, from the repo root
#
# 1. bench/training_gpu.py: examples/s of the default model on synthetic examples,
#    bf16 autocast and fp32, global batches of 1024 and 4096;
# 2. `videorec train` (train, evaluate, register, gate) on the MovieLens features
#    version of .gpu/, on CUDA: the TwoTower NDCG@20 beside the CPU reference's
#    (.gpu/reference_cpu.json, 0.1534 on 2026-12-05) and its examples/s;
# 3. the same two on the CPU (every core), for the ratio on the same host.
#
# Python: .venv's when it exists (`make setup GPU=1`); else the host's python3 with
# .whl/ (the wheels bench/gpu_check_prepare.sh --wheels downloads) installed into
# /tmp/site and the stage folders linked under videorec/ as the editable install maps
# them. Each step writes into OUT_DIR as it goes and has its own time limit, so a cut
# run still leaves what finished.
set -u
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -x .venv/bin/python ]]; then
  PY=.venv/bin/python
else
  PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl > "$OUT/pip.txt" 2>&1 || { tail -20 "$OUT/pip.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
  for s in datagen features evaluation training ranking indexing precompute serving streaming; do
    ln -sfn "../$s" "videorec/$s"  # pyproject.toml's package-dir, without an install
  done
fi
FV=$(cat .gpu/features_version)
vr() { "$PY" -c 'import sys; from videorec.cli import main; sys.exit(main())' "$@"; }
export -f vr
export PY
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "cpus $(nproc)"; "$PY" -c "import torch, numpy, pyarrow, pydantic, mlflow
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())
print('numpy', numpy.__version__, 'pyarrow', pyarrow.__version__,
      'pydantic', pydantic.__version__, 'mlflow', mlflow.__version__)"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step() {  # step NAME LIMIT_S COMMAND...: the command's output in OUT/NAME.txt, timed
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" bash -c "$*" > "$OUT/$name.txt" 2>&1
  echo "rc $? after $((SECONDS - t0)) s" | tee -a "$OUT/$name.txt"
}
step synthetic_gpu 150 "$PY" bench/training_gpu.py --examples 200000 --epochs 3 \
  --modes cuda-bf16 cuda-fp32
step movielens_cuda 150 "TRAIN_DEVICE=cuda vr train --config .gpu/ml.yaml --features $FV --json \
  > $OUT/movielens_cuda.json"
step synthetic_cpu 90 "$PY" bench/training_gpu.py --examples 200000 --epochs 2 --modes cpu
step movielens_cpu 200 "TRAIN_DEVICE=cpu vr train --config .gpu/ml.yaml --features $FV --json \
  > $OUT/movielens_cpu.json"
"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])
for name in ("movielens_cuda", "movielens_cpu"):
    try:
        r = json.loads((out / f"{name}.json").read_text())
    except (OSError, ValueError) as e:
        print(name, "no result:", e)
        continue
    tt = r["models"]["TwoTower"]
    print(name, r["device"], "best epoch", r["best_epoch"],
          f"{r['throughput_examples_per_s']:,.0f} ex/s",
          f"NDCG@20 {tt['ndcg@20']:.4f} Recall@20 {tt['recall@20']:.4f}")
EOF
