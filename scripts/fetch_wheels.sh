#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) the wheels the lent GPU machine lacks for nfpsim's Hydra apps:
# hydra-core and omegaconf (pure-python wheels from PyPI) and antlr4-python3-runtime 4.9.3 (PyPI has
# only its sdist: built here with `pip wheel`; pure python too). The GPU machine (python 3.12) already has
# PyYAML and packaging, the other requirements. Versions default to this venv's, so both ends agree.
#   scripts/fetch_wheels.sh            # then: carry [".whl"] in the device run (scripts/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl

installed() {  # version of a package in this interpreter, else the fallback
  "$PY" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: print(sys.argv[2])" "$1" "$2"
}
HYDRA=${HYDRA_VERSION:-$(installed hydra-core 1.3.2)}
OMEGACONF=${OMEGACONF_VERSION:-$(installed omegaconf 2.3.0)}
ANTLR=4.9.3  # hydra-core and omegaconf require antlr4-python3-runtime==4.9.*

mkdir -p "$DEST"
rm -f "$DEST"/hydra_core-*.whl "$DEST"/omegaconf-*.whl "$DEST"/antlr4_python3_runtime-*.whl  # one version each
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "hydra-core==$HYDRA" "omegaconf==$OMEGACONF"
"$PY" -m pip wheel --quiet --no-deps -w "$DEST" "antlr4-python3-runtime==$ANTLR"

for wheel in "$DEST"/*.whl; do
  case "$wheel" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl) ;;
    *) echo "error: $wheel is not a pure-python wheel; it may not install on the GPU machine" >&2; exit 1 ;;
  esac
done
ls -l "$DEST"
