#!/usr/bin/env bash
# Run a single-node Apache Kafka broker (KRaft, combined broker+controller) on
# 127.0.0.1 for development and for the Kafka bridge integration tests.
#
# The broker comes from Maven Central (via `mvn`), not from a tarball, so it
# works on machines that reach only package registries. See README.md here.
#
# usage: deploy/kafka/kafka.sh COMMAND [ARGS]
#   fetch                         resolve the broker jars into the cache
#   start                         fetch if needed, format storage, start, wait until ready
#   stop                          stop the broker (SIGTERM, SIGKILL after the grace time)
#   restart                       stop, then start
#   status                        running/stopped; exit 0 running, 3 stopped
#   wait [SECONDS]                wait until the running broker answers clients
#   create-topic NAME [PARTS]     create a topic (no error if it exists)
#   list-topics                   print topic names
#   produce TOPIC                 send each stdin line as one record
#   consume TOPIC [COUNT] [SECS]  print COUNT records from the start of TOPIC
#   logs [-f] [LINES]             show (or follow) the broker log
#   run-class CLASS [ARGS...]     run a Kafka main class (e.g. org.apache.kafka.tools.TopicCommand)
#                                 with the cached jars on the classpath
#   reset                         stop and delete the state dir (data, logs)
#   env                           print the settings in effect
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

KAFKA_VERSION="${FLEETMQ_KAFKA_VERSION:-4.4.0}"
CACHE_DIR="${FLEETMQ_KAFKA_CACHE:-${HOME:?HOME is not set}/.cache/fleetmq/kafka-${KAFKA_VERSION}}"
STATE_DIR="${FLEETMQ_KAFKA_DIR:-/tmp/fleetmq-kafka}"
# Absolute paths: the pid check matches the broker's command line.
[[ "$CACHE_DIR" == /* ]] || CACHE_DIR="$PWD/$CACHE_DIR"
[[ "$STATE_DIR" == /* ]] || STATE_DIR="$PWD/$STATE_DIR"
HOST="127.0.0.1"
PORT="${FLEETMQ_KAFKA_PORT:-19092}"
# No arithmetic on an unchecked value: check_settings reports a bad port.
if [[ "$PORT" =~ ^[0-9]{1,5}$ ]]; then
    CONTROLLER_PORT="${FLEETMQ_KAFKA_CONTROLLER_PORT:-$((10#$PORT + 1))}"
else
    CONTROLLER_PORT="${FLEETMQ_KAFKA_CONTROLLER_PORT:-}"
fi
HEAP="${FLEETMQ_KAFKA_HEAP:-512m}"
START_TIMEOUT="${FLEETMQ_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${FLEETMQ_KAFKA_STOP_TIMEOUT:-20}"
JAVA="${JAVA:-${JAVA_HOME:+$JAVA_HOME/bin/}java}"
JAVAC="${JAVAC:-${JAVA_HOME:+$JAVA_HOME/bin/}javac}"
MVN="${MVN:-mvn}"
# Extra arguments for mvn, split on whitespace (e.g. "-o" or "-s settings.xml").
read -r -a MVN_EXTRA <<<"${FLEETMQ_KAFKA_MVN_ARGS:-}"

BOOTSTRAP="${HOST}:${PORT}"
LIBS_DIR="$CACHE_DIR/libs"
HELPER_DIR="$CACHE_DIR/helper"
FETCH_MARKER="$CACHE_DIR/.fetch-complete"
PID_FILE="$STATE_DIR/kafka.pid"
LOG_DIR="$STATE_DIR/logs"
LOG_FILE="$LOG_DIR/kafka.log"
DATA_DIR="$STATE_DIR/data"
SERVER_PROPS="$STATE_DIR/server.properties"
LOG4J_BROKER="$STATE_DIR/log4j2.properties"
LOG4J_TOOLS="$CACHE_DIR/log4j2-tools.properties"

PROG="kafka.sh"

say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
    sed -n '/^# usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit "${1:-64}"
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_port() { [[ "$1" =~ ^[1-9][0-9]{0,4}$ ]] && (($1 < 65536)); }

check_settings() {
    is_port "$PORT" || die "FLEETMQ_KAFKA_PORT='$PORT' is not a TCP port"
    is_port "$CONTROLLER_PORT" ||
        die "FLEETMQ_KAFKA_CONTROLLER_PORT='$CONTROLLER_PORT' is not a TCP port"
    ((PORT != CONTROLLER_PORT)) || die "client port and controller port are both $PORT"
    is_uint "$START_TIMEOUT" || die "FLEETMQ_KAFKA_START_TIMEOUT='$START_TIMEOUT' is not a number of seconds"
    is_uint "$STOP_TIMEOUT" || die "FLEETMQ_KAFKA_STOP_TIMEOUT='$STOP_TIMEOUT' is not a number of seconds"
    [[ "$HEAP" =~ ^[0-9]+[kKmMgG]?$ ]] || die "FLEETMQ_KAFKA_HEAP='$HEAP' is not a JVM heap size like 512m"
}

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH; $2"
}

check_java() {
    need_cmd "$JAVA" "install a JDK 17 or newer (Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME"
    local v major
    v="$("$JAVA" -version 2>&1 | head -n 1)" || die "'$JAVA -version' failed: $v"
    major="$(sed -E 's/.*version "([0-9]+)(\.[0-9]+)?.*/\1/' <<<"$v")"
    if [[ "$major" == 1 ]]; then major=8; fi
    is_uint "$major" || die "cannot read the Java version from: $v"
    ((major >= 17)) || die "Kafka ${KAFKA_VERSION} needs Java 17 or newer, '$JAVA' is: $v"
}

# ---------------------------------------------------------------- fetch

# What the cache was built from; a change (version, pom, helper) refetches.
fetch_fingerprint() {
    {
        echo "kafka ${KAFKA_VERSION}"
        sha256sum "$SCRIPT_DIR/pom.xml" "$SCRIPT_DIR/KafkaProbe.java" | awk '{print $1}'
    } | sha256sum | awk '{print $1}'
}

cache_complete() {
    [[ -f "$FETCH_MARKER" ]] || return 1
    [[ "$(cat "$FETCH_MARKER")" == "$(fetch_fingerprint)" ]] || return 1
    [[ -f "$LIBS_DIR/kafka_2.13-${KAFKA_VERSION}.jar" ]] || return 1
    [[ -f "$LIBS_DIR/kafka-clients-${KAFKA_VERSION}.jar" ]] || return 1
    [[ -f "$HELPER_DIR/KafkaProbe.class" ]] || return 1
    [[ -f "$LOG4J_TOOLS" ]] || return 1
}

write_tools_log4j() {
    cat >"$1" <<'EOF'
# Logging for the helper and the Kafka tools run by kafka.sh: errors only, on stderr.
status = error
appender.err.type = Console
appender.err.name = STDERR
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ERROR
rootLogger.appenderRef.err.ref = STDERR
EOF
}

cmd_fetch() {
    check_java
    if cache_complete; then
        say "Kafka ${KAFKA_VERSION} is already in $CACHE_DIR ($(find "$LIBS_DIR" -name '*.jar' | wc -l) jars); nothing to fetch"
        return 0
    fi
    need_cmd "$MVN" "install Apache Maven (Debian: apt-get install maven) or set MVN"
    need_cmd "$JAVAC" "install a JDK (not only a JRE), e.g. openjdk-17-jdk-headless, or set JAVA_HOME"
    [[ -f "$SCRIPT_DIR/pom.xml" ]] || die "missing $SCRIPT_DIR/pom.xml"
    [[ -f "$SCRIPT_DIR/KafkaProbe.java" ]] || die "missing $SCRIPT_DIR/KafkaProbe.java"
    mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"

    # One fetch at a time per cache dir.
    exec 8>"$CACHE_DIR/.fetch.lock" || die "cannot open $CACHE_DIR/.fetch.lock"
    flock -w 600 8 || die "another fetch into $CACHE_DIR has held the lock for 10 minutes"
    if cache_complete; then
        exec 8>&-
        say "Kafka ${KAFKA_VERSION} was fetched into $CACHE_DIR by another run"
        return 0
    fi

    local t0 tmp
    t0=$SECONDS
    tmp="$CACHE_DIR/.fetch.tmp"
    rm -rf "$tmp" "$FETCH_MARKER"
    mkdir -p "$tmp/libs" "$tmp/helper"
    say "resolving org.apache.kafka:kafka_2.13:${KAFKA_VERSION} and its runtime dependencies with Maven"
    if ! "$MVN" -q -B -Dstyle.color=never "${MVN_EXTRA[@]}" -f "$SCRIPT_DIR/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/mvn.log" 2>&1; then
        tail -n 40 "$tmp/mvn.log" >&2 || true
        die "mvn could not resolve Kafka ${KAFKA_VERSION} from Maven Central (full output: $tmp/mvn.log)"
    fi
    [[ -f "$tmp/libs/kafka_2.13-${KAFKA_VERSION}.jar" ]] ||
        die "mvn succeeded but kafka_2.13-${KAFKA_VERSION}.jar is not in $tmp/libs"
    [[ -f "$tmp/libs/kafka-clients-${KAFKA_VERSION}.jar" ]] ||
        die "mvn succeeded but kafka-clients-${KAFKA_VERSION}.jar is not in $tmp/libs"

    say "compiling the client helper (KafkaProbe) against kafka-clients ${KAFKA_VERSION}"
    if ! "$JAVAC" -nowarn -d "$tmp/helper" -cp "$tmp/libs/*" "$SCRIPT_DIR/KafkaProbe.java" >"$tmp/javac.log" 2>&1; then
        cat "$tmp/javac.log" >&2 || true
        die "javac failed to compile $SCRIPT_DIR/KafkaProbe.java"
    fi
    write_tools_log4j "$tmp/log4j2-tools.properties"

    rm -rf "$LIBS_DIR" "$HELPER_DIR"
    mv "$tmp/libs" "$LIBS_DIR"
    mv "$tmp/helper" "$HELPER_DIR"
    mv "$tmp/log4j2-tools.properties" "$LOG4J_TOOLS"
    rm -rf "$tmp"
    fetch_fingerprint >"$FETCH_MARKER"
    exec 8>&-
    say "fetched Kafka ${KAFKA_VERSION}: $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars," \
        "$(du -sh "$CACHE_DIR" | awk '{print $1}') in $CACHE_DIR, took $((SECONDS - t0)) s"
}

ensure_fetched() {
    if ! cache_complete; then
        cmd_fetch
    fi
}

# Run a Java main class from the cache with quiet logging.
run_tool() {
    "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_TOOLS" \
        -cp "$HELPER_DIR:$LIBS_DIR/*" "$@"
}

probe() { run_tool KafkaProbe "$BOOTSTRAP" "$@"; }

# ---------------------------------------------------------------- process state

# Prints the pid of our broker if it is running, else nothing (exit 1).
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Make sure the pid was not reused by something else.
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "kafka.Kafka $SERVER_PROPS" || return 1
    echo "$pid"
}

port_in_use() {
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

describe_port_user() {
    if command -v ss >/dev/null 2>&1; then
        ss -ltnpH "sport = :$1" 2>/dev/null || true
    fi
}

log_tail() {
    local n="${1:-40}"
    if [[ -s "$LOG_FILE" ]]; then
        # Skip the long "KafkaConfig values" dumps so the tail shows events.
        say "last $n lines of $LOG_FILE (config dumps left out):"
        grep -vE $'^\t[A-Za-z0-9._-]+ = |^ \\(org\\.apache\\.kafka\\.common\\.config\\.AbstractConfig\\)$' "$LOG_FILE" |
            tail -n "$n" >&2 || true
    else
        say "$LOG_FILE is empty or missing"
    fi
}

lock_state() {
    mkdir -p "$STATE_DIR" || die "cannot create state dir $STATE_DIR"
    exec 9>"$STATE_DIR/.lock" || die "cannot open $STATE_DIR/.lock"
    flock -w $((START_TIMEOUT + STOP_TIMEOUT + 60)) 9 ||
        die "another kafka.sh start/stop on $STATE_DIR is still holding $STATE_DIR/.lock"
}

# ---------------------------------------------------------------- start

new_cluster_id() {
    # Same shape as org.apache.kafka.common.Uuid: 16 random bytes, base64url
    # without padding; never starting with '-' (the tools would take it for a flag).
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ ${#id} -eq 22 && "$id" != -* && "$id" != AAAAAAAAAAAAAAAAAAAAA* ]] && break
    done
    echo "$id"
}

write_configs() {
    mkdir -p "$DATA_DIR" "$LOG_DIR"
    cat >"$SERVER_PROPS" <<EOF
# Written by deploy/kafka/kafka.sh on every start; edits here are overwritten.
# Single node, KRaft, broker and controller in one process, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${CONTROLLER_PORT}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${PORT}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${DATA_DIR}

# One replica of everything, topics appear on first use.
auto.create.topics.enable=true
delete.topic.enable=true
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0

# After a kill -9 the controller refuses the new broker registration until the
# old session expires (default 9 s); keep that wait short on one node.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=5000

# Small and short-lived data: tests only.
log.segment.bytes=16777216
log.retention.hours=24
log.retention.bytes=268435456
log.retention.check.interval.ms=60000
num.recovery.threads.per.data.dir=1
num.network.threads=2
num.io.threads=4
EOF
    cat >"$LOG4J_BROKER" <<'EOF'
# Written by deploy/kafka/kafka.sh: broker log to stdout, which the script
# sends to logs/kafka.log in the state dir.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
EOF
}

format_storage() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    local id out
    id="$(new_cluster_id)"
    say "formatting $DATA_DIR for a new cluster $id"
    if ! out="$("$JAVA" -Xmx256m -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J_TOOLS" \
        -cp "$LIBS_DIR/*" kafka.tools.StorageTool format --ignore-formatted \
        --cluster-id "$id" --config "$SERVER_PROPS" 2>&1)"; then
        printf '%s\n' "$out" >&2
        die "kafka.tools.StorageTool format failed for $DATA_DIR"
    fi
    [[ -f "$DATA_DIR/meta.properties" ]] || {
        printf '%s\n' "$out" >&2
        die "StorageTool format ran but $DATA_DIR/meta.properties is missing"
    }
    echo "$id" >"$STATE_DIR/cluster.id"
}

launch() {
    if [[ -f "$LOG_FILE" ]]; then
        mv -f "$LOG_FILE" "$LOG_FILE.1"
    fi
    : >"$LOG_FILE"
    rm -f "$PID_FILE"
    local runner=(env)
    command -v setsid >/dev/null 2>&1 && runner=(setsid)
    # The inner bash writes its own pid, then becomes java (exec keeps the pid).
    # fd 8/9 (our locks) are closed so the broker does not hold them.
    # shellcheck disable=SC2016 # $$ and $1 belong to the inner bash
    "${runner[@]}" bash -c 'echo $$ >"$1"; shift; exec "$@"' kafka-launch "$PID_FILE" \
        "$JAVA" "-Xmx${HEAP}" "-Xms${HEAP}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_BROKER" -Dkafka.logs.dir="$LOG_DIR" \
        -cp "$LIBS_DIR/*" kafka.Kafka "$SERVER_PROPS" \
        </dev/null >>"$LOG_FILE" 2>&1 8>&- 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s "$PID_FILE" ]] && break
        sleep 0.1
    done
    [[ -s "$PID_FILE" ]] || die "the broker launcher did not write $PID_FILE"
}

# wait_ready TIMEOUT [PID]
wait_ready() {
    local timeout="$1" pid="${2:-}" rc=0 t0=$SECONDS
    probe wait "$timeout" ${pid:+"$pid"} || rc=$?
    case "$rc" in
        0) say "broker answers on $BOOTSTRAP after $((SECONDS - t0)) s" ;;
        2)
            log_tail 40
            rm -f "$PID_FILE"
            die "the broker process (pid $pid) exited during startup; see $LOG_FILE"
            ;;
        *)
            log_tail 40
            return 1
            ;;
    esac
}

cmd_start() {
    check_java
    ensure_fetched
    lock_state
    local pid
    if pid="$(running_pid)"; then
        say "already running (pid $pid), checking that it answers on $BOOTSTRAP"
        wait_ready "$START_TIMEOUT" "$pid" ||
            die "broker pid $pid is running but did not answer on $BOOTSTRAP within ${START_TIMEOUT} s"
        return 0
    fi
    if [[ -f "$PID_FILE" ]]; then
        say "removing stale pid file $PID_FILE (pid $(cat "$PID_FILE" 2>/dev/null || echo '?') is not our broker)"
        rm -f "$PID_FILE"
    fi
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        if port_in_use "$p"; then
            describe_port_user "$p" >&2
            die "port $HOST:$p is already in use by another process; stop it or set FLEETMQ_KAFKA_PORT / FLEETMQ_KAFKA_CONTROLLER_PORT"
        fi
    done
    write_configs
    format_storage
    local t0=$SECONDS
    launch
    pid="$(cat "$PID_FILE")"
    say "started Kafka ${KAFKA_VERSION} (pid $pid), log $LOG_FILE; waiting up to ${START_TIMEOUT} s for $BOOTSTRAP"
    if ! wait_ready "$START_TIMEOUT" "$pid"; then
        say "stopping the broker that did not become ready"
        stop_pid "$pid" || true
        rm -f "$PID_FILE"
        die "Kafka did not answer a metadata request on $BOOTSTRAP within ${START_TIMEOUT} s (log: $LOG_FILE)"
    fi
    say "ready in $((SECONDS - t0)) s: bootstrap $BOOTSTRAP"
}

# ---------------------------------------------------------------- stop

stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    say "pid $pid still running after ${STOP_TIMEOUT} s, sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    die "pid $pid survived SIGKILL for 10 s"
}

cmd_stop() {
    lock_state
    local pid t0=$SECONDS
    if ! pid="$(running_pid)"; then
        if [[ -f "$PID_FILE" ]]; then
            say "removing stale pid file $PID_FILE"
            rm -f "$PID_FILE"
        fi
        say "not running"
        return 0
    fi
    say "stopping Kafka (pid $pid)"
    stop_pid "$pid"
    rm -f "$PID_FILE"
    say "stopped in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------- other commands

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running pid=$pid bootstrap=$BOOTSTRAP controller=$HOST:$CONTROLLER_PORT version=$KAFKA_VERSION dir=$STATE_DIR"
        return 0
    fi
    echo "stopped bootstrap=$BOOTSTRAP dir=$STATE_DIR"
    return 3
}

cmd_wait() {
    local timeout="${1:-$START_TIMEOUT}" pid
    is_uint "$timeout" || die "wait: '$timeout' is not a number of seconds"
    cache_complete || die "Kafka ${KAFKA_VERSION} is not fetched into $CACHE_DIR; run: $0 start"
    pid="$(running_pid)" || die "Kafka is not running (no live broker for $PID_FILE); run: $0 start"
    wait_ready "$timeout" "$pid" || die "Kafka (pid $pid) did not answer on $BOOTSTRAP within $timeout s"
}

require_running() {
    cache_complete || die "Kafka ${KAFKA_VERSION} is not fetched into $CACHE_DIR; run: $0 start"
    running_pid >/dev/null || die "Kafka is not running; run: $0 start"
}

cmd_create_topic() {
    [[ $# -ge 1 && -n "$1" ]] || die "usage: $0 create-topic NAME [PARTITIONS]"
    local parts="${2:-1}"
    [[ "$parts" =~ ^[1-9][0-9]*$ ]] || die "create-topic: PARTITIONS '$parts' must be a positive number"
    require_running
    probe create-topic "$1" "$parts" || die "create-topic $1 failed"
}

cmd_list_topics() {
    require_running
    probe list-topics || die "list-topics failed"
}

cmd_produce() {
    [[ $# -ge 1 && -n "$1" ]] || die "usage: $0 produce TOPIC < lines"
    require_running
    probe produce "$1" || die "produce to $1 failed"
}

cmd_consume() {
    [[ $# -ge 1 && -n "$1" ]] || die "usage: $0 consume TOPIC [COUNT] [TIMEOUT_SECONDS]"
    local count="${2:-1}" timeout="${3:-30}"
    is_uint "$count" || die "consume: COUNT '$count' is not a number"
    is_uint "$timeout" || die "consume: TIMEOUT '$timeout' is not a number of seconds"
    require_running
    probe consume "$1" "$count" "$timeout" || die "consume from $1 failed"
}

cmd_logs() {
    local follow=0 lines=100
    while [[ $# -gt 0 ]]; do
        case "$1" in
            -f | --follow) follow=1 ;;
            *) is_uint "$1" || die "logs: '$1' is neither -f nor a line count"; lines="$1" ;;
        esac
        shift
    done
    [[ -f "$LOG_FILE" ]] || die "no log yet at $LOG_FILE (has the broker been started with FLEETMQ_KAFKA_DIR=$STATE_DIR?)"
    if ((follow)); then
        exec tail -n "$lines" -F "$LOG_FILE"
    fi
    tail -n "$lines" "$LOG_FILE"
}

cmd_run_class() {
    [[ $# -ge 1 && -n "$1" ]] || die "usage: $0 run-class CLASS [ARGS...]"
    check_java
    ensure_fetched
    exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J_TOOLS" -cp "$LIBS_DIR/*" "$@"
}

cmd_reset() {
    [[ "$STATE_DIR" != "/" && -n "$STATE_DIR" ]] || die "refusing to delete STATE_DIR='$STATE_DIR'"
    if [[ ! -d "$STATE_DIR" ]]; then
        say "nothing to delete: $STATE_DIR does not exist"
        return 0
    fi
    # Only delete what looks like ours: a dir with our config, or an empty one.
    local entries=()
    shopt -s nullglob dotglob
    entries=("$STATE_DIR"/*)
    shopt -u nullglob dotglob
    if [[ ! -f "$SERVER_PROPS" && ${#entries[@]} -gt 0 && "${entries[*]}" != "$STATE_DIR/.lock" ]]; then
        die "refusing to delete $STATE_DIR: it has no server.properties, so it does not look like a kafka.sh state dir"
    fi
    cmd_stop
    rm -rf "$STATE_DIR"
    say "deleted $STATE_DIR"
}

cmd_env() {
    cat <<EOF
FLEETMQ_KAFKA_VERSION=$KAFKA_VERSION
FLEETMQ_KAFKA_CACHE=$CACHE_DIR
FLEETMQ_KAFKA_DIR=$STATE_DIR
FLEETMQ_KAFKA_PORT=$PORT
FLEETMQ_KAFKA_CONTROLLER_PORT=$CONTROLLER_PORT
FLEETMQ_KAFKA_HEAP=$HEAP
FLEETMQ_KAFKA_START_TIMEOUT=$START_TIMEOUT
FLEETMQ_KAFKA_STOP_TIMEOUT=$STOP_TIMEOUT
FLEETMQ_KAFKA_BOOTSTRAP=$BOOTSTRAP
EOF
}

main() {
    [[ $# -ge 1 ]] || usage 64
    local cmd="$1"
    shift
    case "$cmd" in
        -h | --help | help) usage 0 ;;
    esac
    check_settings
    case "$cmd" in
        fetch) cmd_fetch ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        restart)
            cmd_stop
            cmd_start
            ;;
        status) cmd_status ;;
        wait) cmd_wait "$@" ;;
        create-topic) cmd_create_topic "$@" ;;
        list-topics) cmd_list_topics ;;
        produce) cmd_produce "$@" ;;
        consume) cmd_consume "$@" ;;
        logs) cmd_logs "$@" ;;
        run-class) cmd_run_class "$@" ;;
        reset) cmd_reset ;;
        env) cmd_env ;;
        -h | --help | help) usage 0 ;;
        *) say "unknown command '$cmd'"; usage 64 ;;
    esac
}

main "$@"
