#!/usr/bin/env bash
# Apache Kafka for the tests: one combined KRaft broker+controller on 127.0.0.1.
#
#   tests/infra/kafka.sh start <state-dir>   # prints `export VAR=value` lines
#   tests/infra/kafka.sh stop  <state-dir>
#
# The broker's jars (org.apache.kafka:kafka_2.13, see kafka/pom.xml) are fetched with
# Maven into .tmp/kafka/ (git-ignored, kept between runs); the checker
# (kafka/KafkaCheck.java: an independent read_committed consumer, plain Java clients)
# is compiled there too. Exports:
#   RATIFY_TEST_KAFKA            bootstrap address, 127.0.0.1:PORT
#   RATIFY_TEST_KAFKA_CHECK_CP   java class path of KafkaCheck (java -cp "$CP" KafkaCheck ...)
#   RATIFY_TEST_KAFKA_PIDFILE    pid of the broker JVM (for a test's SIGKILL)
#   RATIFY_TEST_KAFKA_RUN        script that starts the broker again on the same ports
#                                and data and waits until it is ready
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
kafka_version=4.4.0
cache="$root/.tmp/kafka"
libs="$cache/libs-$kafka_version"

log() { echo "kafka.sh: $*" >&2; }
die() { log "$*"; exit 1; }

fetch_libs() {
    [[ -f "$libs/.complete" ]] && return 0
    command -v mvn >/dev/null || die "mvn not found (Maven fetches the broker's jars)"
    command -v java >/dev/null || die "java not found (the broker is a JVM program; Java 17+)"
    log "fetching Apache Kafka $kafka_version jars with Maven into $libs (cached)"
    local work="$cache/mvn-work"
    rm -rf "$work" "$libs.partial"
    mkdir -p "$work"
    cp "$here/kafka/pom.xml" "$work/pom.xml"
    (cd "$work" && mvn -q -B dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$libs.partial") >&2
    touch "$libs.partial/.complete"
    rm -rf "$libs"
    mv "$libs.partial" "$libs"
    rm -rf "$work"
}

# Compiles the checker once per version of its source.
checker_classes() {
    local sum classes
    sum=$(cat "$here/kafka/KafkaCheck.java" | sha256sum | cut -c1-16)
    classes="$cache/checker-$sum"
    if [[ ! -f "$classes/KafkaCheck.class" ]]; then
        log "compiling KafkaCheck into $classes"
        rm -rf "$classes.partial"
        mkdir -p "$classes.partial"
        javac -nowarn -cp "$libs/*" -d "$classes.partial" "$here/kafka/KafkaCheck.java" >&2
        rm -rf "$classes"
        mv "$classes.partial" "$classes"
    fi
    echo "$classes"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Writes the broker's config and a run script into the state dir.
configure() {
    local state=$1 port cport
    port=$(free_port)
    cport=$(free_port)
    while [[ $cport == "$port" ]]; do cport=$(free_port); done
    mkdir -p "$state/data"
    cat >"$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
num.partitions=1
# One node: every internal topic must live with a single replica.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# A SIGKILLed broker's restart waits until its old registration's session expires:
# keep that short (the chaos suite kills the broker).
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
auto.create.topics.enable=false
PROPS
    echo "$port" >"$state/port"
    cat >"$state/run-broker.sh" <<RUN
#!/usr/bin/env bash
# Starts the test broker (again) on its ports and data, waits until it is ready.
set -euo pipefail
setsid java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \\
    -Djava.awt.headless=true \\
    -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \\
    -Dkafka.log.file="$state/broker.log" \\
    -cp "$libs/*" kafka.Kafka "$state/server.properties" \\
    >>"$state/broker.out" 2>&1 </dev/null &
echo \$! >"$state/pid"
"$here/kafka.sh" wait "$state"
RUN
    chmod +x "$state/run-broker.sh"
}

# Polls the port, then a metadata request through the checker; never a fixed sleep.
wait_ready() {
    local state=$1 port pid classes deadline
    port=$(cat "$state/port")
    pid=$(cat "$state/pid")
    classes=$(checker_classes)
    deadline=$((SECONDS + 120))
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "broker exited during startup; see $state/broker.out and $state/broker.log"
        ((SECONDS < deadline)) || die "broker port $port not open after 120 s"
        sleep 0.2
    done
    until java -cp "$classes:$libs/*" KafkaCheck ready "127.0.0.1:$port" 2>>"$state/ready.err"; do
        kill -0 "$pid" 2>/dev/null || die "broker exited during startup; see $state/broker.log"
        ((SECONDS < deadline)) || die "broker on port $port not ready after 120 s"
        sleep 0.5
    done
}

start() {
    local state=$1 classes cluster_id
    stop "$state" 2>/dev/null || true
    fetch_libs
    classes=$(checker_classes)
    rm -rf "$state"
    mkdir -p "$state"
    state=$(cd "$state" && pwd)
    configure "$state"
    cluster_id=$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
    log "formatting KRaft storage (cluster $cluster_id)"
    java -cp "$libs/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
        -Dkafka.log.file="$state/format.log" \
        kafka.tools.StorageTool format --standalone -t "$cluster_id" \
        -c "$state/server.properties" >&2
    log "starting broker on 127.0.0.1:$(cat "$state/port")"
    "$state/run-broker.sh"
    log "broker ready"
    echo "export RATIFY_TEST_KAFKA=127.0.0.1:$(cat "$state/port")"
    echo "export RATIFY_TEST_KAFKA_CHECK_CP='$classes:$libs/*'"
    echo "export RATIFY_TEST_KAFKA_PIDFILE='$state/pid'"
    echo "export RATIFY_TEST_KAFKA_RUN='$state/run-broker.sh'"
}

stop() {
    local state=$1 pid i
    [[ -f "$state/pid" ]] || return 0
    pid=$(cat "$state/pid")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$state/pid"
    rm -rf "$state/data"
}

case "${1:-}" in
start) [[ $# -eq 2 ]] || die "usage: $0 start <state-dir>"; start "$2" ;;
stop) [[ $# -eq 2 ]] || die "usage: $0 stop <state-dir>"; stop "$2" ;;
wait) [[ $# -eq 2 ]] || die "usage: $0 wait <state-dir>"; wait_ready "$2" ;;
*) die "usage: $0 start|stop <state-dir>" ;;
esac
