#!/usr/bin/env bash
# Screenshots of the MLflow UI after a ViT run and a CNN run (README "Reviewing runs").
#   bash docs/ui_screenshot.sh [WORK_DIR]     (needs Debian's chromium: apt-get install chromium; pip installs
#                                              playwright into WORK_DIR/pw to drive it)
# Synthesizes a small X-ray cohort, runs `medvit run` twice into one sqlite store (the planned hybrid ViT,
# then resnet18), starts `mlflow ui` on a free 127.0.0.1 port and has headless Chromium save
# docs/img/mlflow_runs.png (parents, headline metrics), docs/img/mlflow_model_version.png (the version page),
# docs/img/mlflow_logged_model.png (its metrics and dataset) and docs/img/compare.png (`medvit compare`). About 4 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d /tmp/medvit-ui-XXXX)}
medvit=.venv/bin/medvit
uri="sqlite:///$work/mlflow.db"
mkdir -p docs/img "$work"
command -v chromium >/dev/null || { echo "ui_screenshot: chromium not found: apt-get install chromium" >&2; exit 2; }

if [ ! -f "$work/xray/labels.csv" ]; then
  $medvit synth "$work/xray" --kind xray --studies 240 --seed 0 --difficulty 0.3 >/dev/null
fi
common=(--set "data.dicom_root=$work/xray/dicom" --set "data.labels=$work/xray/labels.csv"
        --set "tracking.uri=$uri" --set tracking.experiment=medvit-review --set registry.name=medvit-review-xray
        --set train.epochs=12)
(cd "$work" && "$OLDPWD/$medvit" run --config "$OLDPWD/configs/demo_xray.yaml" "${common[@]}" \
   --set "output.dir=$work/vit" 2>/dev/null | tail -11)
(cd "$work" && "$OLDPWD/$medvit" run --config "$OLDPWD/configs/demo_xray.yaml" "${common[@]}" \
   --set "output.dir=$work/cnn" --set model.arch=resnet18 2>/dev/null | tail -11)

port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PATH="$PWD/.venv/bin:$PATH" .venv/bin/mlflow ui --backend-store-uri "$uri" --host 127.0.0.1 --port "$port" \
  >"$work/ui.log" 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -fs "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done

exp=$(.venv/bin/python -c "from mlflow import MlflowClient; print(MlflowClient('$uri').get_experiment_by_name('medvit-review').experiment_id)")
# Playwright (PyPI) drives Debian's chromium; it lives in its own throwaway venv, not in the project's.
[ -x "$work/pw/bin/python" ] || { python3 -m venv "$work/pw" && "$work/pw/bin/pip" install -q playwright; }
logged=$(.venv/bin/python -c "from mlflow import MlflowClient; print(MlflowClient('$uri').get_model_version('medvit-review-xray', '1').source.removeprefix('models:/'))")
"$work/pw/bin/python" docs/ui_screenshot.py "http://127.0.0.1:$port" "$exp" medvit-review-xray "$logged" docs/img
parents=$(.venv/bin/python -c "
from mlflow import MlflowClient
c = MlflowClient('$uri')
print(' '.join(r.info.run_id for r in c.search_runs(['$exp'], \"tags.\`medvit.stage\` = 'pipeline'\")))")
# shellcheck disable=SC2086
$medvit compare $parents models:/medvit-review-xray/1 --tracking-uri "$uri" --png docs/img/compare.png
echo "ui_screenshot: docs/img/mlflow_{runs,model_version,logged_model}.png, docs/img/compare.png ($work)"
