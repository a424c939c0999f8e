#!/usr/bin/env bash
# Idempotent set-up of lensing_ssc on Debian: MPI + parallel HDF5 from apt, a .venv with mpi4py,
# h5py built against parallel HDF5 (DESIGN.md §8), and the package itself (editable, with test extras).
# A second run only checks what is there and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
STAMP="$VENV/.bootstrap-stamp"

log() { printf '[bootstrap] %s\n' "$*"; }

# 1. Debian packages (skip those already installed).
APT_PKGS="openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config healpy-data"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  log "installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# 2. Virtual environment.
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
VPY="$VENV/bin/python"

# Fast path: nothing changed since the last complete bootstrap.
HASH=$(cat setup.py scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] \
   && "$VPY" -c "import h5py, mpi4py, lensing_ssc; assert h5py.get_config().mpi" 2>/dev/null; then
  log "environment up to date ($VENV)"
  exit 0
fi

"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q numpy cython pkgconfig "setuptools>=77" wheel mpi4py

# 3. h5py against Debian's parallel HDF5 (about 2 minutes, once).
if ! "$VPY" -c "import h5py, sys; sys.exit(0 if h5py.get_config().mpi else 1)" 2>/dev/null; then
  log "building h5py against parallel HDF5 (takes ~2 minutes once)"
  "$VPY" -m pip uninstall -q -y h5py 2>/dev/null || true
  HDF5_DIR=/usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)/hdf5/openmpi
  CC=mpicc HDF5_MPI=ON HDF5_DIR="$HDF5_DIR" \
    "$VPY" -m pip install -q --no-binary=h5py --no-build-isolation --no-cache-dir h5py
fi

# 4. The package with its test extras.
"$VPY" -m pip install -q -e ".[test]"
"$VPY" -c "import h5py; assert h5py.get_config().mpi, 'h5py lacks MPI support'"
echo "$HASH" > "$STAMP"
log "done: activate with 'source .venv/bin/activate'"
