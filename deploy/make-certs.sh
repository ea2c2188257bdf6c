#!/bin/sh
# Makes a CA and the certificates of a 3-node Ratify cluster with openssl
# (README, "Security"): for each node N (1..3), ratify://peer/N naming the hosts it is
# reached at, and an operator certificate for the admin commands. A try-out, not a PKI:
# keep the CA key offline, and issue short-lived certificates from your own CA in
# production.
#
#   deploy/make-certs.sh DIR compose      # hosts ratify1, ratify2, ratify3 (+ localhost)
#   deploy/make-certs.sh DIR kubernetes [NAMESPACE]
#                                          # hosts ratify-0.ratify.NS.svc.cluster.local, ...
#
# Writes DIR/ca.pem, DIR/ca.key, DIR/node-N.pem, DIR/node-N.key, DIR/operator.pem,
# DIR/operator.key and DIR/probe.pem, DIR/probe.key (no role: for health checks);
# existing files are replaced. Keep ca.key out of what you mount into containers.
set -eu
dir=${1:?usage: make-certs.sh DIR compose|kubernetes [NAMESPACE]}
kind=${2:?usage: make-certs.sh DIR compose|kubernetes [NAMESPACE]}
ns=${3:-default}
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -days 3650 -subj "/CN=ratify CA" -out ca.pem
issue() { # issue NAME DAYS SAN
    key "$1.key"
    openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$3" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days "$2" \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
for n in 1 2 3; do
    case $kind in
        compose) host="ratify$n" ;;
        kubernetes) host="ratify-$((n - 1)).ratify.$ns.svc.cluster.local" ;;
        *) echo "make-certs.sh: kind must be compose or kubernetes, not $kind" >&2; exit 2 ;;
    esac
    issue "node-$n" 90 "URI:ratify://peer/$n,DNS:$host,DNS:localhost,IP:127.0.0.1"
done
issue operator 30 "URI:ratify://operator/admin,URI:ratify://client/admin"
# No role: enough for the health checks (`ratify probe`), nothing else.
issue probe 365 "DNS:localhost"
rm -f ca.srl
chmod 0644 ./*.pem
chmod 0640 ./*.key
echo "certificates in $(pwd)"
