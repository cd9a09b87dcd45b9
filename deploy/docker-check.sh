#!/usr/bin/env bash
# Lints deploy/Dockerfile with hadolint (run by `make test`). The image cannot be built without a Docker
# engine; this at least catches what a reviewer would: unpinned or misused instructions, a non-numeric
# USER, shell pitfalls in RUN. hadolint comes from PyPI into target/tools/venv (deploy/tools.sh).
set -euo pipefail

cd "$(dirname "$0")/.."

# shellcheck source=tools.sh
source deploy/tools.sh
echo "+ hadolint deploy/Dockerfile"
"$tools/hadolint" --version
"$tools/hadolint" deploy/Dockerfile
echo "docker-check.sh: the Dockerfile passed hadolint"
