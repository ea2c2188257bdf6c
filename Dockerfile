# The `ratify` binary in a small image. Every node setting comes from RATIFY_*
# environment variables (or flags after the image name, or a --config file); see
# README, "Operating Ratify".
#
#   docker build -t ratify .
#   docker run --rm ratify --help
#   docker compose -f deploy/docker-compose.yml up        # a 3-node cluster

# --- build ---------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src
# The whole workspace: cargo resolves every member from Cargo.lock (--locked).
COPY . .
# protoc is vendored (protoc-bin-vendored): nothing else to install.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ratify-coordinator --bin ratify \
 && install -m 0755 target/release/ratify /usr/local/bin/ratify

# --- run -----------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/ratify --shell /usr/sbin/nologin ratify \
 && install -d -o ratify -g ratify -m 0750 /var/lib/ratify
COPY --from=build /usr/local/bin/ratify /usr/local/bin/ratify
USER ratify:ratify
# Listen on every interface; the addresses other nodes and clients use are the
# ones in RATIFY_PEERS. Set RATIFY_ID and RATIFY_PEERS (and RATIFY_INIT=true on one
# node) per node.
# Mutual TLS on every port (README, "Security"): mount the CA and this node's
# certificate (naming ratify://peer/<id>) at /etc/ratify/tls; deploy/make-certs.sh
# makes a set for a try.
ENV RATIFY_RAFT_ADDR=0.0.0.0:7001 \
    RATIFY_API_ADDR=0.0.0.0:7101 \
    RATIFY_METRICS_ADDR=0.0.0.0:9101 \
    RATIFY_DATA_DIR=/var/lib/ratify \
    RATIFY_TLS_CA=/etc/ratify/tls/ca.pem \
    RATIFY_TLS_CERT=/etc/ratify/tls/node.pem \
    RATIFY_TLS_KEY=/etc/ratify/tls/node.key
VOLUME ["/var/lib/ratify"]
# 7001 Raft (nodes only), 7101 clients and participants (gRPC, health, reflection),
# 9101 Prometheus metrics and the web console (HTTPS, client certificate required).
EXPOSE 7001 7101 9101
# SERVING: the ready leader, or a follower that redirects to the leader it knows.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["ratify", "probe", "--addr", "127.0.0.1:7101"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["ratify", "node"]
