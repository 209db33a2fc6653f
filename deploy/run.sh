#!/usr/bin/env bash
# Quick start: starts the local stack (deploy/start.sh), builds encore in release mode, writes
# the music catalog to Postgres, streams listening events into Kafka in the background, and
# runs the dataflow job in the foreground until Ctrl-C.
#
# Environment: everything deploy/start.sh reads (see deploy/lib.sh), plus
#   ENCORE_RATE  events per second of the background generator [500]
#   ENCORE_SEED  seed of the catalog and the events (they must match) [1]
set -euo pipefail
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENCORE_RATE="${ENCORE_RATE:-500}"
ENCORE_SEED="${ENCORE_SEED:-1}"

bash "$DEPLOY_DIR/start.sh"

cd "$REPO_DIR"
say "building encore (release)"
cargo build --release --bin encore-gen --bin encore-flow
BIN="$REPO_DIR/target/release"

say "writing the catalog (seed $ENCORE_SEED) to $ENCORE_POSTGRES_URL"
"$BIN/encore-gen" catalog --postgres "$ENCORE_POSTGRES_URL" --seed "$ENCORE_SEED"

GENERATOR_LOG="$ENCORE_STATE_DIR/generator.log"
say "streaming events at $ENCORE_RATE/s to $ENCORE_BROKERS topic $ENCORE_TOPIC (log: $GENERATOR_LOG)"
"$BIN/encore-gen" stream --brokers "$ENCORE_BROKERS" --topic "$ENCORE_TOPIC" \
    --events 0 --rate "$ENCORE_RATE" --seed "$ENCORE_SEED" </dev/null >>"$GENERATOR_LOG" 2>&1 &
GENERATOR_PID=$!
# SIGINT lets the generator flush what is in flight and log its totals; SIGTERM if it has not
# exited 10 s later.
stop_generator() {
    local waited=0
    kill -INT "$GENERATOR_PID" 2>/dev/null || return 0
    while kill -0 "$GENERATOR_PID" 2>/dev/null && ((waited < 50)); do
        sleep 0.2
        waited=$((waited + 1))
    done
    kill -TERM "$GENERATOR_PID" 2>/dev/null || true
    wait "$GENERATOR_PID" 2>/dev/null || true
}
trap stop_generator EXIT

# The dataflow job, in the foreground: Ctrl-C makes it commit its current epoch and exit, and
# the EXIT trap then stops the generator. The stack keeps running (deploy/stop.sh stops it).
say "running encore-flow (Ctrl-C to stop); results in the tables of $ENCORE_POSTGRES_URL"
"$BIN/encore-flow" --brokers "$ENCORE_BROKERS" --topic "$ENCORE_TOPIC" --postgres "$ENCORE_POSTGRES_URL"
