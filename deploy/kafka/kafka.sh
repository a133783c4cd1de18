#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1 for one machine.
#   kafka.sh start|stop|status
# Jars come from Maven Central via deploy/kafka/pom.xml (scripts/install.sh fetches them); data and logs
# live under $RLHF_KAFKA_DATA_DIR (default $RLHF_STATE_DIR/kafka). Port: $RLHF_KAFKA_PORT (default 9092);
# the controller listens on port + 1.
# `start` also creates the project's topics (proto/topics.py). To use an existing cluster instead, skip
# this script and set RLHF_KAFKA_BOOTSTRAP_SERVERS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${RLHF_STATE_DIR:-$ROOT/.state}"
PORT="${RLHF_KAFKA_PORT:-9092}"
CPORT=$((PORT + 1))
JARS="$STATE/kafka/jars"
DIR="${RLHF_KAFKA_DATA_DIR:-$STATE/kafka}"  # data, config, log and pid of this broker
DATA="$DIR/data-$PORT"
PIDFILE="$DIR/broker-$PORT.pid"
CONF="$DIR/server-$PORT.properties"
LOG="$DIR/broker-$PORT.log"
PY="$STATE/venv/bin/python"
export RLHF_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$PORT"

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

JAVA=(java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
      -Dlog4j2.configurationFile="$ROOT/deploy/kafka/log4j2.properties" -cp "$JARS/*")

start() {
  if running; then echo "kafka: already running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE"))"; return; fi
  [ -f "$JARS/.complete" ] || { echo "kafka: jars missing; run ./rlhf setup" >&2; exit 1; }
  mkdir -p "$DATA"
  sed -e "s#@PORT@#$PORT#g" -e "s#@CPORT@#$CPORT#g" -e "s#@DATA@#$DATA#g" \
    "$ROOT/deploy/kafka/server.properties" > "$CONF"
  if [ ! -f "$DATA/meta.properties" ]; then
    "${JAVA[@]}" kafka.tools.StorageTool format --standalone \
      -t "$("${JAVA[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" -c "$CONF" >> "$LOG" 2>&1
  fi
  nohup "${JAVA[@]}" kafka.Kafka "$CONF" >> "$LOG" 2>&1 &
  echo $! > "$PIDFILE"
  # Wait until the broker answers a metadata request (up to 60 s), then create the topics.
  for _ in $(seq 1 60); do
    if ! running; then echo "kafka: broker exited; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; fi
    if "$PY" -m proto.topics --wait 1 >/dev/null 2>&1; then
      echo "kafka: up on 127.0.0.1:$PORT (pid $(cat "$PIDFILE")), topics ready"; return
    fi
    sleep 1
  done
  echo "kafka: no answer after 60 s; see $LOG" >&2; exit 1
}

stop() {
  if ! running; then rm -f "$PIDFILE"; echo "kafka: not running"; return; fi
  local pid; pid="$(cat "$PIDFILE")"
  kill "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  echo "kafka: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "kafka: running on 127.0.0.1:$PORT"; else echo "kafka: stopped"; exit 1; fi ;;
  *) echo "usage: kafka.sh start|stop|status" >&2; exit 2 ;;
esac
