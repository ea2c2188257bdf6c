#!/usr/bin/env bash
# A throwaway PostgreSQL 15 server for the tests (see README.md in this folder).
#
#   postgres.sh start <state-dir>   initdb (once per state dir), start on a free loopback
#                                   port, wait until it accepts connections, print exports
#   postgres.sh stop <state-dir>    stop it (fast, then immediate), whatever state it is in
#
# Exports (stdout, everything else goes to stderr):
#   RATIFY_TEST_PG_URL      libpq/tokio-postgres URL of the `postgres` database
#   RATIFY_TEST_PG_DATA     the data directory (for `pg_ctl -D` when tests restart it)
#   RATIFY_TEST_PG_CTL      the pg_ctl binary
#   RATIFY_TEST_PG_OPTS     the `-o` options the postmaster was started with
#   RATIFY_TEST_PG_LOG      the server log file
#   RATIFY_TEST_PG_RUN_AS   the user pg_ctl must run as (empty: the current user)
#   RATIFY_TEST_PG_TLS_CA   the CA of the server's TLS certificate (the server takes TLS
#                           and plaintext; `sslmode=require` connects with TLS only)
#
# Tests SIGKILL the postmaster (its pid is the first line of $RATIFY_TEST_PG_DATA/postmaster.pid)
# and start it again with
#   [runuser -u $RATIFY_TEST_PG_RUN_AS --] $RATIFY_TEST_PG_CTL -D $RATIFY_TEST_PG_DATA -w \
#       -l $RATIFY_TEST_PG_LOG -o "$RATIFY_TEST_PG_OPTS" start
#
# Postgres refuses to run as root, so as root the server runs as the `postgres` user
# (the Debian packages create it); otherwise as the current user.
set -euo pipefail

cmd=${1:-}
state=${2:-}
if [[ -z "$cmd" || -z "$state" ]]; then
    echo "usage: $0 start|stop <state-dir>" >&2
    exit 2
fi

find_bindir() {
    local d
    for d in "${RATIFY_PG_BINDIR:-}" /usr/lib/postgresql/15/bin; do
        if [[ -n "$d" && -x "$d/pg_ctl" ]]; then
            echo "$d"
            return 0
        fi
    done
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return 0
    fi
    return 1
}

install_postgres() {
    # The project's machines reach Debian's package archive; install the server if it
    # is missing (as root only: otherwise ask for it).
    if [[ $(id -u) -ne 0 ]]; then
        echo "PostgreSQL 15 server binaries not found (/usr/lib/postgresql/15/bin);" \
            "install postgresql-15 or set RATIFY_PG_BINDIR" >&2
        exit 1
    fi
    echo "installing postgresql-15 with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15) >&2
}

# run_as USER CMD...: runs CMD as USER (empty: as the current user).
run_as() {
    local user=$1
    shift
    if [[ -n "$user" ]]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 - <<'EOF' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
}

stop() {
    local bindir data
    data="$state/data"
    [[ -f "$data/postmaster.pid" ]] || return 0
    bindir=$(find_bindir) || return 0
    local user=""
    [[ $(id -u) -eq 0 ]] && user=postgres
    run_as "$user" "$bindir/pg_ctl" -D "$data" -m fast -w -t 20 stop >&2 ||
        run_as "$user" "$bindir/pg_ctl" -D "$data" -m immediate -w -t 20 stop >&2 || true
}

start() {
    local bindir
    bindir=$(find_bindir) || {
        install_postgres
        bindir=$(find_bindir)
    }
    local user="" owner
    owner=$(id -un)
    if [[ $(id -u) -eq 0 ]]; then
        user=postgres
        owner=postgres
    fi
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    local data="$state/data" sock="$state/sock" log="$state/postgres.log"
    # A leftover server from an interrupted run: stop it first.
    stop
    mkdir -p "$sock"
    if [[ ! -f "$data/PG_VERSION" ]]; then
        rm -rf "$data"
        mkdir -p "$data"
        [[ -n "$user" ]] && chown "$owner" "$data" "$sock" "$state"
        chmod 700 "$data"
        run_as "$user" "$bindir/initdb" -D "$data" --auth=trust --username=postgres \
            --encoding=UTF8 --locale=C >&2
    fi
    [[ -n "$user" ]] && chown "$owner" "$sock" && chown -R "$owner" "$data"
    chmod 700 "$data"
    touch "$log"
    [[ -n "$user" ]] && chown "$owner" "$log"
    # TLS: a throwaway CA and a server certificate for 127.0.0.1 / localhost.
    local tls="$state/tls"
    if ! command -v openssl >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl) >&2
    fi
    if [[ ! -f "$tls/server.pem" ]]; then
        mkdir -p "$tls"
        (
            cd "$tls"
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key 2>/dev/null
            openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=ratify test postgres CA" -out ca.pem
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key 2>/dev/null
            openssl req -new -key server.key -subj "/CN=localhost" -out server.csr
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
            openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
                -extfile server.ext -out server.pem 2>/dev/null
            rm -f server.csr server.ext ca.srl
        ) >&2
    fi
    chmod 600 "$tls/server.key"
    [[ -n "$user" ]] && chown "$owner" "$tls/server.key" "$tls/server.pem"
    local port opts
    port=$(free_port)
    # fsync stays on: the tests SIGKILL the postmaster and rely on prepared state
    # surviving, as it would in production. syncfs: crash recovery otherwise fsyncs
    # every file of the data dir one by one (30 s and more with the tests' databases).
    # wal_level=logical: the trade-off lab's outbox relay reads the outbox by change
    # data capture (a logical slot with the test_decoding plugin).
    opts="-p $port -k $sock -c listen_addresses=127.0.0.1 -c max_prepared_transactions=200 -c max_connections=300 -c recovery_init_sync_method=syncfs -c wal_level=logical -c max_replication_slots=20 -c ssl=on -c ssl_cert_file=$tls/server.pem -c ssl_key_file=$tls/server.key"
    run_as "$user" "$bindir/pg_ctl" -D "$data" -w -t 60 -l "$log" -o "$opts" start >&2 || {
        tail -n 30 "$log" >&2
        exit 1
    }
    local url="postgres://postgres@127.0.0.1:$port/postgres"
    echo "postgres ready at $url (data $data, log $log)" >&2
    echo "export RATIFY_TEST_PG_URL='$url'"
    echo "export RATIFY_TEST_PG_DATA='$data'"
    echo "export RATIFY_TEST_PG_CTL='$bindir/pg_ctl'"
    echo "export RATIFY_TEST_PG_OPTS='$opts'"
    echo "export RATIFY_TEST_PG_LOG='$log'"
    echo "export RATIFY_TEST_PG_RUN_AS='$user'"
    echo "export RATIFY_TEST_PG_TLS_CA='$tls/ca.pem'"
}

case "$cmd" in
start) start ;;
stop) stop ;;
*)
    echo "usage: $0 start|stop <state-dir>" >&2
    exit 2
    ;;
esac
