#!/usr/bin/env bash
# Set up tracemark on a fresh machine: Fashion-MNIST and Chromium (apt), a virtualenv with the pinned
# CPU torch, and the package with its dev extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Fashion-MNIST, and Chromium (the tests render audit report pages in a
# real browser, headless).
APT_PACKAGES=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || APT_PACKAGES+=(dataset-fashion-mnist)
command -v chromium > /dev/null || APT_PACKAGES+=(chromium)
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_PACKAGES[@]}"
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# constraints.txt pins the CPU torch build; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
echo "tracemark is installed in .venv ($(.venv/bin/tracemark --version))"

# Seldon MLServer, a real third-party v2 inference server for tests/test_mlserver.py, in its
# own virtualenv: its pinned dependencies conflict with tracemark's. Reinstalled only when
# scripts/mlserver-requirements.txt changes (its hash is stamped into the virtualenv).
MLSERVER_STAMP=.venv-mlserver/.requirements.sha256
MLSERVER_HASH="$(sha256sum scripts/mlserver-requirements.txt | cut -d' ' -f1)"
if [ ! -x .venv-mlserver/bin/mlserver ] || [ "$(cat "$MLSERVER_STAMP" 2>/dev/null)" != "$MLSERVER_HASH" ]; then
  "$PYTHON" -m venv --clear .venv-mlserver
  .venv-mlserver/bin/python -m pip install --quiet --disable-pip-version-check \
    -r scripts/mlserver-requirements.txt
  echo "$MLSERVER_HASH" > "$MLSERVER_STAMP"
fi
echo "MLServer is installed in .venv-mlserver for tests/test_mlserver.py ($(.venv-mlserver/bin/mlserver --version))"
