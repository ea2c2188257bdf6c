#!/usr/bin/env bash
# Python for the mixed-language tests (tests/tests/python.rs): a virtualenv under
# .tmp/python/ with the pinned packages of examples/python/requirements.txt, and the
# ratify.v1 stubs generated from proto/ with grpcio-tools.
#
#   tests/infra/python.sh start <state-dir>   prints export RATIFY_PYTHON=... (and
#                                             RATIFY_PY_STUBS); everything else on stderr
#   tests/infra/python.sh stop <state-dir>    nothing runs in the background: no-op
#
# The virtualenv is cached: it is rebuilt only when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
cmd=${1:-}
state=${2:-}
[[ -n $cmd && -n $state ]] || { echo "usage: $0 start|stop <state-dir>" >&2; exit 2; }

case $cmd in
stop) exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop <state-dir>" >&2; exit 2 ;;
esac

{
    pkg="$root/examples/python"
    venv="$root/.tmp/python/venv"
    stamp="$venv/.requirements.sha256"
    want=$(sha256sum "$pkg/requirements.txt" | cut -d' ' -f1)
    python=${PYTHON:-$(command -v python3 || command -v python)}
    if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        echo "python: creating $venv with $("$python" --version)"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$pkg/requirements.txt"
        echo "$want" >"$stamp"
    else
        echo "python: reusing $venv"
    fi
    stubs="$root/.tmp/python/stubs"
    # Always from the current proto/ (cheap; regenerated only when a .proto is newer).
    (cd "$pkg" && RATIFY_PY_STUBS="$stubs" "$venv/bin/python" -c 'import ratify_py.pb')
    echo "python: stubs in $stubs"
    mkdir -p "$state"
} >&2

printf "export RATIFY_PYTHON=%q\n" "$root/.tmp/python/venv/bin/python"
printf "export RATIFY_PY_STUBS=%q\n" "$root/.tmp/python/stubs"
