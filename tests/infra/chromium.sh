#!/usr/bin/env bash
# Headless Chromium for the web console's browser test (tests/tests/console.rs):
# Debian's `chromium` package, installed with apt-get when /usr/bin/chromium is missing
# (needs root, as CI has).
#
#   tests/infra/chromium.sh start <state-dir>   prints export RATIFY_CHROMIUM=...;
#                                               everything else on stderr
#   tests/infra/chromium.sh stop <state-dir>    nothing runs in the background: no-op
set -euo pipefail
cd "$(dirname "$0")/../.."
cmd=${1:-}
state=${2:-}
[[ -n $cmd && -n $state ]] || { echo "usage: $0 start|stop <state-dir>" >&2; exit 2; }

case $cmd in
stop) exit 0 ;;
start) ;;
*) echo "usage: $0 start|stop <state-dir>" >&2; exit 2 ;;
esac

chromium=/usr/bin/chromium
{
    if [[ ! -x $chromium ]]; then
        echo "chromium: installing Debian's chromium package"
        apt-get update -q
        apt-get install -y -q --no-install-recommends chromium
    fi
    [[ -x $chromium ]] || { echo "chromium: $chromium is still missing after apt-get" >&2; exit 1; }
    echo "chromium: $("$chromium" --version 2>/dev/null || echo "$chromium")"
    mkdir -p "$state"
} >&2

printf "export RATIFY_CHROMIUM=%q\n" "$chromium"
