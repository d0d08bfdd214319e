#!/usr/bin/env bash
# Build the benchmark's own environment (the project, its extras, the peers), then run
# every benchmark in one run, so all ratios come from one run. Arguments go to bench.py
# (--quick, --baseline REF, --peers ...). Go's figures need `go` on the PATH (Debian's
# golang-go); without it the Go column is empty.
set -uo pipefail
cd "$(dirname "$0")/.."
venv=benchmarks/.venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q -U pip
"$venv/bin/pip" install -q -e '.[test]' -r benchmarks/requirements.txt  # test: the http and ray extras, uvicorn
# pygolang does not build with Cython 3; build it with Cython 2 (its C++ runtime compiles
# here with g++). A failure is reported by bench.py as a missing peer, never hidden.
if ! "$venv/bin/python" -c "import golang.context" 2>/dev/null; then
    "$venv/bin/pip" install -q 'cython<3' setuptools wheel setuptools-dso gevent &&
    "$venv/bin/pip" install -q --no-build-isolation pygolang ||
    echo "pygolang failed to install; it is reported as missing" >&2
fi
exec "$venv/bin/python" -m benchmarks.bench "$@"
