#!/usr/bin/env bash
# Installs Debian's `prometheus` package for the tests: promtool (deploy/prometheus/check.sh) and the
# server binary (tests/ops.rs starts its own on loopback). The package's system service is kept from
# starting. Does nothing when both binaries are already on PATH. Root, or sudo, is needed to install.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "install.sh: promtool and prometheus are missing and apt-get is not here." >&2
  echo "  Put both on PATH (https://prometheus.io/download/), then run make test again." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "install.sh: installing prometheus needs root: apt-get install -y prometheus" >&2
    exit 1
  fi
  sudo="sudo"
fi

echo "installing Debian's prometheus package (promtool and the server, for the tests; its service is not started)"
# A policy-rc.d answering 101 tells dpkg not to start services; removed again afterwards.
own_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod 755 /usr/sbin/policy-rc.d
  own_policy=1
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
fi
$sudo apt-get update
$sudo apt-get install -y --no-install-recommends prometheus </dev/null
# In case a service manager started it anyway: the tests run their own server.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  $sudo systemctl stop prometheus || true
fi
promtool --version 2>&1 | sed -n 1p
