#!/usr/bin/env bash
# Build DAPPER's Fortran QG model (dapper/mods/QG/f90 → the f2py extension `py_mod`) into the dapper
# package installed in the venv, as DAPPER's own README (dapper/mods/QG/f90/README.md) says:
#     f2py -c utils.f90 parameters.f90 helmholtz.f90 calc.f90 qgflux.f90 qgstep.f90 interface.f90 -m py_mod
# Idempotent: does nothing when `dapper.mods.QG.f90.py_mod` already imports. Installs gfortran with
# apt-get when it is missing (needs root or sudo), and meson/ninja from PyPI (f2py --backend meson).
#
#   bash tools/build_dapper_qg.sh            # or: make dapper
#   PY=/path/to/python bash tools/build_dapper_qg.sh
#   FORCE=1 bash tools/build_dapper_qg.sh    # rebuild even if built
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || { echo "no python at $PY (make setup, or PY=...)" >&2; exit 2; }
# absolute: the f2py build below runs in a temporary folder (the Makefile passes .venv/bin/python)
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"

if ! "$PY" -c "import dapper" >/dev/null 2>&1; then
    echo "DAPPER is not installed in $PY: pip install 'latentda[dapper]' (dapper==1.7.1)" >&2
    exit 2
fi
# The f90 folder, found without importing dapper.mods.QG (whose import generates a sample file,
# which needs the module built).
F90="$("$PY" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("dapper").origin).parent / "mods" / "QG" / "f90")')"
[ -d "$F90" ] || { echo "no QG sources at $F90" >&2; exit 2; }

# Loads the extension itself: importing dapper.mods.QG would generate DAPPER's sample file first.
built() {
    "$PY" - "$F90" >/dev/null 2>&1 <<'PYEOF'
import glob, importlib.util, sys
path, = glob.glob(sys.argv[1] + "/py_mod.cpython-*")
spec = importlib.util.spec_from_file_location("py_mod", path)
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
module.interface_mod.step
PYEOF
}
# DAPPER's QG initial sample (dapper.mods.rc.dirs.samples/QG_samples.npz: 400 states of a free run,
# 700 steps of spin-up then one every 10), written by `import dapper.mods.QG` when missing (~2 min).
sample() {
    echo "DAPPER QG sample file: $("$PY" -c 'import os; os.environ.setdefault("MPLBACKEND", "Agg")
import dapper.mods.QG as qg; print(qg.sample_filename)' 2>/dev/null | tail -1)"
}
if [ -z "${FORCE:-}" ] && built; then
    echo "DAPPER QG module already built: $(ls "$F90"/py_mod*.so)"
    sample
    exit 0
fi

if ! command -v gfortran >/dev/null 2>&1; then
    echo "installing gfortran (apt-get)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gfortran >/dev/null
fi

# f2py's meson backend (the only one from Python 3.12 on; numpy.distutils, still shipped for 3.11, fails
# with setuptools >= 60), which needs meson and ninja: from PyPI into the venv when missing.
"$PY" -c "import mesonbuild" >/dev/null 2>&1 && [ -x "$(dirname "$PY")/ninja" ] || {
    echo "installing meson and ninja (pip)"; "$PY" -m pip install --quiet meson ninja; }
export PATH="$(dirname "$PY"):$PATH"   # meson and ninja of the venv

BUILD="$(mktemp -d)"
trap 'rm -rf "$BUILD"' EXIT
cp "$F90"/*.f90 "$BUILD"/
(
    cd "$BUILD"
    "$PY" -m numpy.f2py --backend meson -c utils.f90 parameters.f90 helmholtz.f90 calc.f90 qgflux.f90 qgstep.f90 interface.f90 \
        -m py_mod > build.log 2>&1 || { tail -40 build.log >&2; echo "f2py build failed" >&2; exit 1; }
)
rm -f "$F90"/py_mod.cpython-* 
cp "$BUILD"/py_mod*.so "$F90"/
built || { echo "built $(ls "$F90"/py_mod*.so) but it does not import" >&2; exit 1; }
echo "DAPPER QG module built: $(ls "$F90"/py_mod*.so)"
sample
