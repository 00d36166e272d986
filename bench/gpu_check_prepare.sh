#!/usr/bin/env bash
# Prepare the GPU check (bench/gpu_check.sh) on a machine with the CPU stack and Spark:
# everything the check reads goes under .gpu/ (git-ignored), small enough to copy to a
# bare GPU host (about 21 MB; the watch events stay here: training reads the features
# version and the data set's dimension tables only).
#
#   bench/gpu_check_prepare.sh [MOVIELENS_DIR] [--wheels]
#
# 1. .gpu/ml.yaml: the movielens profile with every path under .gpu/ and
#    training.device taken from $TRAIN_DEVICE (auto by default);
# 2. the MovieLens data set and its features version (Spark), the version's name in
#    .gpu/features_version;
# 3. the text embeddings' cache (.gpu/text), filled by one CPU `videorec train` (about
#    2.5 min on 2 vCPUs; its NDCG@20 is the reference the check's runs are compared
#    with), whose model version and MLflow store are then removed: the check trains
#    its own;
# 4. --wheels: .whl/, the cp312 x86-64 wheels a GPU image with torch, numpy, pyarrow
#    and pandas but nothing of this project lacks (pydantic, mlflow and their needs;
#    about 35 MB), for a host that cannot reach a package index.
set -euo pipefail
cd "$(dirname "$0")/.."
ML=../shared/datasets/ml-latest-small WHEELS=0
for a in "$@"; do
  if [[ "$a" == --wheels ]]; then WHEELS=1; else ML=$a; fi
done
VR=.venv/bin/videorec
mkdir -p .gpu
cat > .gpu/ml.yaml <<'EOF'
# The GPU check's config (bench/gpu_check_prepare.sh): the movielens profile, with
# every path under .gpu/ and the training device from $TRAIN_DEVICE.
profile: movielens-gpu
artifacts:
  root: .gpu/artifacts
mlflow:
  tracking_uri: sqlite:///.gpu/mlflow.db
  registered_model: videorec-two-tower-movielens
  registered_ranker: videorec-ranker-movielens
data:
  dir: .gpu/data/ml-small
features:
  window_days: 10000
  max_examples_per_user: 100000
  split: per_user
  eval_fraction: 0.2
training:
  device: ${TRAIN_DEVICE:-auto}
  text_cache_dir: .gpu/text
EOF
$VR import-movielens "$ML" --out .gpu/data/ml-small --config .gpu/ml.yaml --overwrite
# The logical date whose window ends at the data set's as-of time (what `train` picks).
date=$(.venv/bin/python -c "import sys
from videorec.dataset import read_manifest
from videorec.training.train import default_date
print(default_date(read_manifest(sys.argv[1])))" .gpu/data/ml-small)
$VR features --config .gpu/ml.yaml --date "$date" --json > .gpu/features.json
.venv/bin/python -c "import json; print(json.load(open('.gpu/features.json'))['version'])" \
  > .gpu/features_version
TRAIN_DEVICE=cpu $VR train --config .gpu/ml.yaml --features "$(cat .gpu/features_version)" \
  --json > .gpu/reference_cpu.json
rm -rf .gpu/artifacts/models .gpu/mlflow.db .gpu/data/ml-small/watch_events
if (( WHEELS )); then
  rm -rf .whl .gpu/wheels-all && mkdir -p .whl .gpu/wheels-all
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/wheels-all -c constraints.txt \
    mlflow pydantic PyYAML rich
  # What the GPU image already holds (numpy, pyarrow, pandas, torch's needs, ...) stays out.
  have=" numpy pandas pyarrow scipy scikit-learn matplotlib pillow contourpy cycler fonttools
    kiwisolver pyparsing python-dateutil six packaging requests urllib3 certifi idna
    charset-normalizer jinja2 markupsafe click cloudpickle protobuf pyyaml rich pygments
    markdown-it-py mdurl typing-extensions joblib threadpoolctl werkzeug attrs anyio h11
    aiohttp aiosignal aiohappyeyeballs frozenlist multidict yarl propcache zipp narwhals
    annotated-doc"
  have=" $(echo $have) "  # one line, single spaces
  for f in .gpu/wheels-all/*.whl; do
    n=$(basename "$f" | sed 's/-[0-9].*//' | tr 'A-Z_' 'a-z-')
    [[ "$have" == *" $n "* ]] || cp "$f" .whl/
  done
  rm -rf .gpu/wheels-all
fi
du -sh --apparent-size .gpu .whl 2>/dev/null || true
