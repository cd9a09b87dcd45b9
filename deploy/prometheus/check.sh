#!/usr/bin/env bash
# Checks of the Prometheus files in deploy/prometheus/, run by `make test`:
#   - alerts.yml is valid (promtool check rules);
#   - every alert behaves as its unit tests in alerts.test.yml say (promtool test rules);
#   - prometheus.yml, the docker-compose Prometheus configuration, is valid, rule files included
#     (promtool check config);
#   - alerts.yml is what the chart renders from helm/switchyard/files/alerts.yml with its defaults
#     (deploy/prometheus/render.sh), so the two never drift apart.
# promtool comes with Debian's `prometheus` package: apt-get install -y prometheus (.ci/run does it).
set -euo pipefail

cd "$(dirname "$0")/../.."

if ! command -v promtool >/dev/null 2>&1; then
  echo "check.sh: promtool not found. Install it with: apt-get install -y prometheus" >&2
  echo "  (or download it from https://prometheus.io/download/). The package's service need not run." >&2
  exit 1
fi

run() {
  echo "+ $*"
  "$@"
}

echo "+ promtool --version"
promtool --version 2>&1 | sed -n 1p
run promtool check rules deploy/prometheus/alerts.yml
run promtool test rules deploy/prometheus/alerts.test.yml
run promtool check config deploy/prometheus/prometheus.yml

echo "+ deploy/prometheus/render.sh target/alerts.rendered.yml; cmp with deploy/prometheus/alerts.yml"
mkdir -p target
bash deploy/prometheus/render.sh target/alerts.rendered.yml
if ! cmp deploy/prometheus/alerts.yml target/alerts.rendered.yml; then
  echo "check.sh: deploy/prometheus/alerts.yml is stale: run deploy/prometheus/render.sh" >&2
  exit 1
fi

echo "check.sh: all Prometheus checks passed"
