#!/usr/bin/env bash
# Quick start: the whole pipeline on this machine with zero configuration.
#
#  1. starts the local stack (deploy/start.sh: Tansu + PostgreSQL, topic created);
#  2. builds encore-gen and encore-flow in release mode;
#  3. writes the music catalog (users, artists, albums, tracks) to Postgres;
#  4. streams listening events into Kafka in the background (encore-gen stream);
#  5. runs encore-flow as 2 processes × 1 worker (-n 2 -p 0|1 -h deploy/state/flow-hosts),
#     logs in deploy/state/flow-p0.log and flow-p1.log, each line prefixed [p0]/[p1]; each
#     process serves Prometheus metrics (--metrics-addr) at http://127.0.0.1:PORT/metrics,
#     on two free ports from 9464 (p0 the first);
#  6. shows live progress until Ctrl-C (deploy/watch.sh: events/s, lag per partition, last
#     commit, one user's recommendations and one track's neighbours; the metrics URLs above
#     them); when stdout is not a terminal, a compact line every 10 s instead.
#
# Ctrl-C (SIGINT or SIGTERM to this script): both encore-flow processes get SIGINT, commit
# their current epoch and exit; then the generator is stopped; then the script says where the
# data is (and where the metrics were served). The stack keeps running (deploy/stop.sh stops
# it). If an encore-flow process exits on its own, the other one and the generator are
# stopped and the script exits 1 saying which process failed and why. If the script itself
# dies without stopping them (SIGKILL, the OOM killer), the kernel sends each of them SIGTERM
# (setpriv --pdeathsig): they commit or flush and exit rather than run on unattended.
#
# Rerunnable: the stack and its data are kept, the catalog is rewritten identically, and
# encore-flow resumes from the offsets it committed to Postgres (it rebuilds its state by
# replaying the topic first). The generator starts again at the beginning of its seed's
# stream, so the topic then holds those events once more (more listens by the same users).
#
# Environment: everything deploy/start.sh reads (see deploy/lib.sh), plus
#   ENCORE_RATE       events per second of the background generator [500]
#   ENCORE_SEED       seed of the catalog and the events (they must match) [1]
#   ENCORE_FLOW_PORT  first of the two ports the encore-flow processes talk on
#                     [the first two free ports from 2101]
#   ENCORE_METRICS_PORT  metrics port of process 0; process 1 takes the next one
#                     [the first two free ports from 9464]
#   ENCORE_FLOW_ARGS  extra encore-flow flags for both processes, e.g. "--epoch-ms 500" []
#                     (not --metrics-addr: each process gets its own, see ENCORE_METRICS_PORT)
#   ENCORE_BIN_DIR    a directory holding encore-gen and encore-flow to run instead of
#                     building them (e.g. binaries built elsewhere) [build with cargo]
#   CARGO_TARGET_DIR  where cargo builds, as for cargo itself [target]
set -euo pipefail
# The stack settings given in the environment, repeated in the hints printed at the end.
STACK_ENV=""
for name in ENCORE_STATE_DIR ENCORE_KAFKA_PORT ENCORE_PG_PORT ENCORE_STORAGE ENCORE_TOPIC ENCORE_PARTITIONS; do
    [[ -n "${!name:-}" ]] && STACK_ENV+="$name=${!name} "
done
# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=deploy/watch.sh
source "$DEPLOY_DIR/watch.sh"

ENCORE_RATE="${ENCORE_RATE:-500}"
ENCORE_SEED="${ENCORE_SEED:-1}"
read -r -a FLOW_EXTRA_ARGS <<<"${ENCORE_FLOW_ARGS:-}"
for arg in "${FLOW_EXTRA_ARGS[@]}"; do
    if [[ "$arg" == --metrics-addr* ]]; then
        die "ENCORE_FLOW_ARGS must not hold --metrics-addr: run.sh gives each process its own (ENCORE_METRICS_PORT pins them)"
    fi
done
# Checked before anything starts (the stack, a build of several minutes).
if [[ -n "${ENCORE_METRICS_PORT:-}" ]]; then
    if ! [[ "$ENCORE_METRICS_PORT" =~ ^[1-9][0-9]{0,4}$ ]] || ((ENCORE_METRICS_PORT >= 65535)); then
        die "ENCORE_METRICS_PORT must be a port number from 1 to 65534 (process 1 takes the next one), got '$ENCORE_METRICS_PORT'"
    fi
fi
# Resolved before the cd below, so a path relative to the caller's directory works.
if [[ -n "${ENCORE_BIN_DIR:-}" ]]; then
    BIN="$(cd "$ENCORE_BIN_DIR" 2>/dev/null && pwd)" || die "ENCORE_BIN_DIR $ENCORE_BIN_DIR is not a directory"
    for program in encore-gen encore-flow; do
        [[ -f "$BIN/$program" && -x "$BIN/$program" ]] || die "ENCORE_BIN_DIR: no executable $BIN/$program"
    done
fi
PROCESSES=2
GENERATOR_LOG="$ENCORE_STATE_DIR/generator.log"
HOSTFILE="$ENCORE_STATE_DIR/flow-hosts"

command -v psql >/dev/null || die "psql (the PostgreSQL client) is needed for the progress display"
mkdir -p "$ENCORE_STATE_DIR"

# A run killed with SIGKILL stops its children only through their parent-death signal, so
# they may still be committing (or, without setpriv, run on); two jobs writing the same
# tables would fence each other, so refuse rather than guess.
for name in flow-p0 flow-p1 generator; do
    pid="$(live_pid "$ENCORE_STATE_DIR/$name.pid" encore-)"
    if [[ -n "$pid" ]]; then
        die "$name of an earlier run.sh is still running (pid $pid): stop it with 'kill -INT $pid' (or wait for that run to finish)"
    fi
done

bash "$DEPLOY_DIR/start.sh"

cd "$REPO_DIR"
if [[ -n "${ENCORE_BIN_DIR:-}" ]]; then
    say "running encore-gen and encore-flow from $BIN (ENCORE_BIN_DIR: no build)"
else
    ensure_openssl_dev
    ensure_libclang
    say "building encore (release; the first build takes several minutes)"
    cargo build --release --bin encore-gen --bin encore-flow
    # Where cargo put them: CARGO_TARGET_DIR (relative to the repository, where cargo ran) or target/.
    TARGET_DIR="${CARGO_TARGET_DIR:-target}"
    [[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$REPO_DIR/$TARGET_DIR"
    BIN="$TARGET_DIR/release"
fi

say "writing the catalog (seed $ENCORE_SEED) to $ENCORE_POSTGRES_URL"
"$BIN/encore-gen" catalog --postgres "$ENCORE_POSTGRES_URL" --seed "$ENCORE_SEED"

# The two processes' addresses. Free ports are looked for at every run, so a port taken by
# something else since the last run is simply skipped.
if [[ -n "${ENCORE_FLOW_PORT:-}" ]]; then
    [[ "$ENCORE_FLOW_PORT" =~ ^[0-9]+$ ]] || die "ENCORE_FLOW_PORT must be a port number"
    FLOW_PORTS=("$ENCORE_FLOW_PORT" $((ENCORE_FLOW_PORT + 1)))
else
    first="$(free_port 2101)" || die "no free port in 2101-2200: set ENCORE_FLOW_PORT"
    second="$(free_port $((first + 1)))" || die "no second free port after $first: set ENCORE_FLOW_PORT"
    FLOW_PORTS=("$first" "$second")
fi
printf '127.0.0.1:%s\n' "${FLOW_PORTS[@]}" >"$HOSTFILE"

# Their metrics endpoints, found the same way (a taken port would end that process at start
# with "cannot serve metrics on ADDR", reported below like any other failure).
if [[ -n "${ENCORE_METRICS_PORT:-}" ]]; then
    METRICS_PORTS=("$ENCORE_METRICS_PORT" $((ENCORE_METRICS_PORT + 1)))
else
    first="$(free_port 9464)" || die "no free port in 9464-9563: set ENCORE_METRICS_PORT"
    second="$(free_port $((first + 1)))" || die "no second free port after $first: set ENCORE_METRICS_PORT"
    METRICS_PORTS=("$first" "$second")
fi
METRICS_URLS=()
for port in "${METRICS_PORTS[@]}"; do
    METRICS_URLS+=("http://127.0.0.1:$port/metrics")
done
# The progress screen scrapes them; recorded for a deploy/watch.sh started on its own.
WATCH_METRICS_URLS=("${METRICS_URLS[@]}")
printf '%s\n' "${METRICS_URLS[@]}" >"$ENCORE_STATE_DIR/metrics-urls"

# --- children ------------------------------------------------------------------------------
# Children run in their own session (setsid; bash's background children are never process
# group leaders, so setsid does not fork and $! is the program itself): a Ctrl-C in the
# terminal then reaches only this script, which stops them in order. The log prefixers ignore
# SIGINT so they keep the last lines a stopping process writes; they end when their program
# does.
#
# If this script dies without stopping them (SIGKILL, the OOM killer: no trap runs), the
# kernel sends each child SIGTERM, its parent-death signal, which setpriv (util-linux) sets
# before it execs the program: encore-flow commits its epoch and exits, the generator
# flushes and exits, as on Ctrl-C. The signal belongs to the process that called setpriv and
# fires when its parent, this (single-threaded) shell, dies; setsid and exec keep it, a fork
# would not, hence setsid first and no fork after. SIGTERM rather than SIGINT: bash starts
# background commands with SIGINT ignored, so a SIGINT arriving before the program installs
# its handler would be lost, while SIGTERM then still ends it. A script killed in the
# instant between a fork and setpriv is not noticed; the pid check at the next start
# catches that child.
ORPHAN_SIGNAL=(setpriv --pdeathsig TERM)
if ! setpriv --help 2>&1 | grep -q -- --pdeathsig; then
    say "warning: setpriv --pdeathsig (util-linux) not found: if this script is killed with SIGKILL, encore-flow and the generator keep running (stop them with kill -INT)"
    ORPHAN_SIGNAL=()
fi
GENERATOR_PID=""
FLOW_PIDS=()
STOPPED=0
STOP_REQUESTED=0

# Sends signal $1 to the pids $3… and waits up to $2 seconds for them all to exit.
signal_and_wait() {
    local signal="$1" seconds="$2" pid waited=0 alive
    shift 2
    for pid in "$@"; do
        kill "-$signal" "$pid" 2>/dev/null || true
    done
    while ((waited < seconds * 5)); do
        alive=0
        for pid in "$@"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        ((alive)) || return 0
        sleep 0.2
        waited=$((waited + 1))
    done
    return 1
}

# Collects the exit status of process $1 into FLOW_STATUS (in this shell: `wait` only knows
# this shell's children, so never call it in a $(…) subshell).
declare -A FLOW_STATUS=()
collect_status() {
    local status=0
    [[ -n "${FLOW_STATUS[$1]:-}" ]] && return 0
    wait "${FLOW_PIDS[$1]}" 2>/dev/null || status=$?
    FLOW_STATUS[$1]="$status"
}

# Prints how process $1 ended (after collect_status).
exit_reason() {
    local status="${FLOW_STATUS[$1]:-?}"
    if [[ "$status" =~ ^[0-9]+$ ]] && ((status > 128)); then
        printf 'p%s was killed by SIG%s' "$1" "$(kill -l $((status - 128)) 2>/dev/null || echo "$((status - 128))")"
    else
        printf 'p%s exited with status %s' "$1" "$status"
    fi
}

# Stops the flow processes (SIGINT: commit the current epoch and exit; SIGTERM after 60 s,
# SIGKILL 10 s later), then the generator (SIGINT: flush and log totals; SIGTERM after 10 s).
stop_children() {
    local p pid
    local -a alive=()
    for pid in "${FLOW_PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && alive+=("$pid")
    done
    if ((${#alive[@]})); then
        say "stopping encore-flow (SIGINT to ${alive[*]}: each commits its current epoch and exits)"
        if ! signal_and_wait INT 60 "${alive[@]}"; then
            say "encore-flow did not exit within 60 s of SIGINT: SIGTERM"
            signal_and_wait TERM 10 "${alive[@]}" || signal_and_wait KILL 5 "${alive[@]}" || true
        fi
    fi
    for p in "${!FLOW_PIDS[@]}"; do
        collect_status "$p"
        say "encore-flow $(exit_reason "$p")"
    done
    if [[ -n "$GENERATOR_PID" ]] && kill -0 "$GENERATOR_PID" 2>/dev/null; then
        say "stopping the generator (pid $GENERATOR_PID)"
        signal_and_wait INT 10 "$GENERATOR_PID" || signal_and_wait TERM 5 "$GENERATOR_PID" || true
        wait "$GENERATOR_PID" 2>/dev/null || true
        tail -n 1 "$GENERATOR_LOG" 2>/dev/null | sed 's/^/  /' >&2 || true
    fi
    rm -f "$ENCORE_STATE_DIR"/flow-p*.pid "$ENCORE_STATE_DIR/generator.pid"
}

# The last informative line of process $1's log in this run, without its timestamp and tabs
# (timely's connection messages at start-up are left out: they are expected).
last_log_line() {
    awk '/\] ---- /{line="[p'"$1"'] (no log lines yet)"; next}
         /awaiting connections|error connecting to worker/{next} {line=$0} END{print line}' \
        "$ENCORE_STATE_DIR/flow-p$1.log" 2>/dev/null | sed -E 's/ [0-9]{4}-[0-9T:.-]+Z +/ /' | tr '\t' ' '
}

# Runs once, on every way out (Ctrl-C, a failed process, an error in this script).
finish() {
    ((STOPPED)) && return 0
    STOPPED=1
    trap '' INT TERM # a second Ctrl-C must not interrupt the orderly stop
    [[ -t 1 ]] && printf '\n'
    stop_children
    for ((p = 0; p < PROCESSES; p++)); do
        # encore-flow's summary line of this run (after the last "----" header), if any.
        awk '/\] ---- /{line=""} /\] process=.*replayed=/{line=$0} END{if (line != "") print "  " line}' \
            "$ENCORE_STATE_DIR/flow-p$p.log" >&2 2>/dev/null || true
    done
    watch_sample
    cat >&2 <<EOF

encore: stopped. The stack is still running and the data stays:
  results (Postgres):  $ENCORE_POSTGRES_URL
     committed $WATCH_COMMITTED_TOTAL of ${WATCH_END_TOTAL:-?} messages, last commit $WATCH_LAST_COMMIT UTC
     psql '$ENCORE_POSTGRES_URL' -c 'SELECT * FROM user_recommendations_ranked WHERE user_id = $WATCH_USER'
     psql '$ENCORE_POSTGRES_URL' -c 'SELECT * FROM encore_progress'
  events (Kafka):      $ENCORE_BROKERS topic $ENCORE_TOPIC
  metrics:             ${METRICS_URLS[0]} (p0), ${METRICS_URLS[1]} (p1)
                       (Prometheus text format, served only while encore-flow runs)
  state and logs:      $ENCORE_STATE_DIR (flow-p0.log, flow-p1.log, generator.log)
  run again:           ${STACK_ENV}deploy/run.sh (resumes from the committed offsets)
  stop the stack:      ${STACK_ENV}deploy/stop.sh   (start afresh: also rm -rf $ENCORE_STATE_DIR)
EOF
}
trap finish EXIT
trap 'STOP_REQUESTED=1' INT TERM

# Launched only now that the traps are set, so that no way out leaves them running.
# A rerun continues the seed's stream after what the topic already holds (Tansu's stored
# watermarks; 0 with memory storage or without sqlite3), instead of sending it again.
ALREADY_SENT=$(topic_high_watermarks "$ENCORE_TOPIC" | awk '{sum += $2} END {print sum + 0}')
say "streaming events at $ENCORE_RATE/s to $ENCORE_BROKERS topic $ENCORE_TOPIC after $ALREADY_SENT already there (log: $GENERATOR_LOG)"
setsid "${ORPHAN_SIGNAL[@]}" "$BIN/encore-gen" stream --brokers "$ENCORE_BROKERS" --topic "$ENCORE_TOPIC" \
    --skip "$ALREADY_SENT" --events 0 --rate "$ENCORE_RATE" --seed "$ENCORE_SEED" --no-progress \
    </dev/null >>"$GENERATOR_LOG" 2>&1 &
GENERATOR_PID=$!
echo "$GENERATOR_PID" >"$ENCORE_STATE_DIR/generator.pid"

# Process $1 of encore-flow, run in the background: exec keeps $! the program's pid, and
# bash's note when a job is killed then names this function rather than the long command.
encore_flow_process() {
    local p="$1" log="$ENCORE_STATE_DIR/flow-p$1.log"
    printf '[p%s] ---- %s: encore-flow -n %s -p %s -h %s --metrics-addr 127.0.0.1:%s\n' "$p" "$(date -u '+%F %T UTC')" \
        "$PROCESSES" "$p" "$HOSTFILE" "${METRICS_PORTS[$p]}" >>"$log"
    NO_COLOR=1 RUST_LOG="${RUST_LOG:-warn,encore_dataflow=info}" exec setsid "${ORPHAN_SIGNAL[@]}" "$BIN/encore-flow" \
        --brokers "$ENCORE_BROKERS" --topic "$ENCORE_TOPIC" --postgres "$ENCORE_POSTGRES_URL" \
        --metrics-addr "127.0.0.1:${METRICS_PORTS[$p]}" "${FLOW_EXTRA_ARGS[@]}" \
        -n "$PROCESSES" -p "$p" -h "$HOSTFILE" </dev/null \
        > >(trap '' INT TERM; exec sed -u "s/^/[p$p] /" >>"$log") 2>&1
}
for ((p = 0; p < PROCESSES; p++)); do
    encore_flow_process "$p" &
    FLOW_PIDS+=($!)
    echo "$!" >"$ENCORE_STATE_DIR/flow-p$p.pid"
done
say "encore-flow running as $PROCESSES processes × 1 worker on 127.0.0.1:${FLOW_PORTS[0]} and :${FLOW_PORTS[1]} (pids ${FLOW_PIDS[*]}; logs: $ENCORE_STATE_DIR/flow-p*.log)"
say "metrics: ${METRICS_URLS[0]} (p0), ${METRICS_URLS[1]} (p1)"

# --- progress, until Ctrl-C or a process exits ---------------------------------------------
FAILED=""
next_draw=0
if [[ -t 1 ]]; then
    interval=2
    printf '\033[2J'
else
    interval=10
fi
while ((STOP_REQUESTED == 0)); do
    for p in "${!FLOW_PIDS[@]}"; do
        if ! kill -0 "${FLOW_PIDS[$p]}" 2>/dev/null; then
            FAILED="$p"
            break 2
        fi
    done
    if ((SECONDS >= next_draw)); then
        next_draw=$((SECONDS + interval))
        watch_sample
        if [[ -t 1 ]]; then
            {
                printf 'encore quick start   %s UTC   Ctrl-C stops it cleanly\n' "$(date -u +%H:%M:%S)"
                printf 'encore-flow: %s processes × 1 worker (pids %s), generator %s events/s (pid %s)\n' \
                    "$PROCESSES" "${FLOW_PIDS[*]}" "$ENCORE_RATE" "$GENERATOR_PID"
                printf 'metrics: %s (p0)  %s (p1)\n' "${METRICS_URLS[0]}" "${METRICS_URLS[1]}"
                for ((p = 0; p < PROCESSES; p++)); do
                    printf '  %.110s\n' "$(last_log_line "$p")"
                done
                printf '\n'
                watch_screen
            } | watch_draw
        else
            printf 'encore: %s\n' "$(watch_line)"
        fi
    fi
    sleep 0.5 || true # killed by the terminal's Ctrl-C: the INT trap has set STOP_REQUESTED
done

if [[ -n "$FAILED" ]]; then
    # The other process usually follows within a second ("lost a peer process"); report every
    # process that ended, and name as the cause those that did not merely lose their peer.
    sleep 1
    [[ -t 1 ]] && printf '\n'
    for p in "${!FLOW_PIDS[@]}"; do
        kill -0 "${FLOW_PIDS[$p]}" 2>/dev/null && continue
        collect_status "$p"
        last="$(tail -n 1 "$ENCORE_STATE_DIR/flow-p$p.log" 2>/dev/null || true)"
        if [[ "$last" == *"lost a peer process"* ]]; then
            say "encore-flow $(exit_reason "$p") after losing its peer: $last"
        else
            say "encore-flow $(exit_reason "$p"), the cause; last log lines ($ENCORE_STATE_DIR/flow-p$p.log):"
            awk '/\] ---- /{n=0} {line[n++]=$0} END{for (i = (n > 5 ? n - 5 : 0); i < n; i++) print line[i]}' \
                "$ENCORE_STATE_DIR/flow-p$p.log" >&2 2>/dev/null || true
        fi
    done
    say "stopping the rest"
    finish
    exit 1
fi
finish
# A clean stop exits 0; a process that did not exit cleanly on SIGINT makes it 1.
for p in "${!FLOW_STATUS[@]}"; do
    [[ "${FLOW_STATUS[$p]}" == 0 ]] || exit 1
done
