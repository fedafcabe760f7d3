#!/usr/bin/env bash
# A RabbitMQ cluster of 3 nodes on this one machine, for lavamq's failover
# tests and benchmarks: own node names, ports, data directories and Erlang
# cookie, every listener on 127.0.0.1. It leaves the machine's own node
# (rabbit@localhost on 5672) alone.
#
#   scripts/rabbitmq-cluster.sh start    start every node that is not running; wait for the cluster
#   scripts/rabbitmq-cluster.sh stop     stop every node cleanly
#   scripts/rabbitmq-cluster.sh status   one line per node, then the cluster's members
#   scripts/rabbitmq-cluster.sh urls     the AMQP URLs, comma-separated (lavamq --broker takes them)
#   scripts/rabbitmq-cluster.sh pid N    the OS pid of node N (tests kill -9 it)
#   scripts/rabbitmq-cluster.sh info     base port, data dir and node name prefix (for tests)
#
# Node N (1..3) listens for AMQP on $LAVAMQ_CLUSTER_PORT+N-1 (default
# 5781..5783), management on 10000 above, Erlang distribution on 20000 above.
# Another base port makes another cluster beside it (for a test session of
# its own): its node names and data dir follow the port unless given.
#   default port 5781:  nodes lavamq-c1..3@localhost, data /tmp/lavamq-rabbitmq-cluster
#   LAVAMQ_CLUSTER_PORT=5881: nodes lavamq-5881-c1..3@localhost, data /tmp/lavamq-rabbitmq-cluster-5881
# $LAVAMQ_CLUSTER_NAME sets the node name prefix, $LAVAMQ_CLUSTER_DIR the data dir.
set -euo pipefail

NODES=3
BASE_PORT=${LAVAMQ_CLUSTER_PORT:-5781}
if [ "$BASE_PORT" = 5781 ]; then suffix=""; else suffix="-$BASE_PORT"; fi
NAME=${LAVAMQ_CLUSTER_NAME:-lavamq$suffix}
DIR=${LAVAMQ_CLUSTER_DIR:-/tmp/lavamq-rabbitmq-cluster$suffix}
BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
WAIT=${LAVAMQ_CLUSTER_WAIT:-120}

# the cluster's own cookie and env file: nothing from /etc/rabbitmq or the
# shared node's home is read
export HOME="$DIR"
export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
export RABBITMQ_USE_LONGNAME=false
export ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"

node_name() { echo "$NAME-c$1@localhost"; }
amqp_port() { echo $((BASE_PORT + $1 - 1)); }

node_env() {
  local n=$1 d="$DIR/n$1"
  echo RABBITMQ_NODENAME="$(node_name "$n")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="$(amqp_port "$n")" \
    RABBITMQ_DIST_PORT=$(($(amqp_port "$n") + 20000)) \
    RABBITMQ_MNESIA_BASE="$d/mnesia" \
    RABBITMQ_LOG_BASE="$d/log" \
    RABBITMQ_PID_FILE="$d/pid" \
    RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
}

ctl() {  # ctl N args...: rabbitmqctl against node N
  local n=$1
  shift
  "$BIN/rabbitmqctl" -n "$(node_name "$n")" "$@"
}

prepare() {
  mkdir -p "$DIR"
  chmod 700 "$DIR"
  if [ ! -s "$DIR/.erlang.cookie" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/.erlang.cookie"
    chmod 400 "$DIR/.erlang.cookie"
  fi
  : >"$RABBITMQ_CONF_ENV_FILE"
  echo "[rabbitmq_management]." >"$RABBITMQ_ENABLED_PLUGINS_FILE"
  local n
  for n in $(seq 1 $NODES); do
    mkdir -p "$DIR/n$n/log" "$DIR/n$n/mnesia"
    {
      echo "listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")"
      echo "management.tcp.ip = 127.0.0.1"
      echo "management.tcp.port = $(($(amqp_port "$n") + 10000))"
      echo "loopback_users = none"
      echo "disk_free_limit.absolute = 50MB"
      echo "vm_memory_high_watermark.relative = 0.1"
      echo "cluster_formation.peer_discovery_backend = classic_config"
      local m
      for m in $(seq 1 $NODES); do
        echo "cluster_formation.classic_config.nodes.$m = $(node_name "$m")"
      done
      # a restarted node waits this long for its peers (the cluster's last
      # node to stop must be among the first to start)
      echo "mnesia_table_loading_retry_limit = 20"
    } >"$DIR/n$n/rabbitmq.conf"
    echo "[]." >"$DIR/n$n/advanced.config"
  done
}

running() {  # running N: is node N's process alive?
  local pidfile="$DIR/n$1/pid"
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

serialised() {  # two sessions starting or stopping the same cluster take turns
  mkdir -p "$DIR"
  exec 9>"$DIR/.script.lock"
  flock -w "$WAIT" 9 || {
    echo "another rabbitmq-cluster.sh holds $DIR/.script.lock" >&2
    exit 1
  }
}

start() {
  serialised
  prepare
  local n started=()
  for n in $(seq 1 $NODES); do
    running "$n" && continue
    rm -f "$DIR/n$n/pid"
    # every missing node at once: a restarted node waits for its peers
    # (without the script's lock: fd 9 would keep it held for the node's life)
    setsid env $(node_env "$n") "$BIN/rabbitmq-server" </dev/null >>"$DIR/n$n/log/startup.log" 2>&1 9>&- &
    started+=("$n")
  done
  for n in "${started[@]}"; do
    if ! ctl "$n" wait "$DIR/n$n/pid" --timeout "$WAIT" >/dev/null 2>&1; then
      echo "node $(node_name "$n") did not start; see $DIR/n$n/log/" >&2
      tail -n 20 "$DIR/n$n/log/startup.log" >&2 || true
      exit 1
    fi
  done
  local deadline=$((SECONDS + WAIT))
  until [ "$(members_running)" = "$NODES" ]; do
    if [ $SECONDS -gt $deadline ]; then
      echo "cluster did not form within ${WAIT} s" >&2
      status >&2
      exit 1
    fi
    sleep 1
  done
  echo "cluster of $NODES nodes running: $(urls)"
}

members_running() {  # how many nodes the first running node sees running
  local n
  for n in $(seq 1 $NODES); do
    if running "$n"; then
      ctl "$n" cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))' ||
        echo 0
      return
    fi
  done
  echo 0
}

stop() {
  serialised
  local n
  for n in $(seq 1 $NODES); do
    if running "$n"; then
      ctl "$n" stop "$DIR/n$n/pid" >/dev/null 2>&1 || kill "$(cat "$DIR/n$n/pid")" 2>/dev/null || true
    fi
  done
  for n in $(seq 1 $NODES); do
    local deadline=$((SECONDS + 60))
    while running "$n" && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    if running "$n"; then
      echo "node $(node_name "$n") still running" >&2
      exit 1
    fi
  done
  echo "cluster stopped"
}

status() {
  local n
  for n in $(seq 1 $NODES); do
    if running "$n"; then
      echo "$(node_name "$n") running pid $(cat "$DIR/n$n/pid") amqp://127.0.0.1:$(amqp_port "$n")"
    else
      echo "$(node_name "$n") not running"
    fi
  done
  echo "running members: $(members_running) of $NODES"
}

urls() {
  local n out=()
  for n in $(seq 1 $NODES); do
    out+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$n")/")
  done
  local IFS=,
  echo "${out[*]}"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
urls) urls ;;
pid) cat "$DIR/n${2:?node number}/pid" ;;
info) echo "port=$BASE_PORT dir=$DIR name=$NAME" ;;
*)
  echo "usage: $0 start|stop|status|urls|pid N|info" >&2
  exit 2
  ;;
esac
