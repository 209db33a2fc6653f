#!/usr/bin/env bash
# Live progress of the pipeline: events/s, lag, commit latency and stale users from the
# encore-flow processes' metrics endpoints, committed offsets from Postgres, and one user's
# recommendations and one track's neighbours with titles and artists from the catalog.
#
#   deploy/watch.sh            redraw every 2 s until Ctrl-C (a line every 10 s when stdout is
#                              not a terminal)
#   deploy/watch.sh --once     print one sample (two scrapes 1 s apart, for the rates) and exit
#
# deploy/run.sh sources this file and calls watch_sample / watch_screen / watch_line itself.
#
# Where the figures come from:
# * the metrics endpoints (curl; the metrics are listed in docs/operating.md, "Metrics"):
#   events/s is the change of encore_events_consumed_total between two samples, per process;
#   lag is encore_partition_lag (the topic's end - the next offset to consume) per partition;
#   commit latency is the mean of the commits between two samples (the change of
#   encore_commit_duration_seconds_sum over that of _count, served by process 0); stale users,
#   how long ago the stalest was refreshed and the refreshes per second are
#   encore_stale_users, encore_stale_refresh_age_seconds and encore_users_refreshed_total;
# * committed offsets and the last commit: Postgres table encore_progress, written by
#   encore-flow in the same transaction as the results (so "committed" means visible in the
#   tables);
# * the topic end per partition: the high watermarks in Tansu's sqlite storage file
#   (deploy/state/tansu/tansu.db, read-only; Tansu's CLI has no offsets command), else the
#   processes' encore_partition_high_watermark; the produced rate is the change of their sum;
# * one user's recommendations: view user_recommendations_ranked, with updated_at (the commit
#   that last changed the user's list); one track's neighbours: view track_neighbors_ranked.
#
# Configuration: the variables of deploy/lib.sh (ports, topic, state dir), and
#   ENCORE_METRICS_URLS  the processes' metrics URLs, space-separated [the ones run.sh recorded
#                        in $ENCORE_STATE_DIR/metrics-urls, else http://127.0.0.1:9464/metrics
#                        and http://127.0.0.1:9465/metrics]

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The metrics endpoints, one per process (run.sh sets its own after sourcing this file).
WATCH_METRICS_URLS=()
if [[ -n "${ENCORE_METRICS_URLS:-}" ]]; then
    read -r -a WATCH_METRICS_URLS <<<"$ENCORE_METRICS_URLS"
elif [[ -s "$ENCORE_STATE_DIR/metrics-urls" ]]; then
    mapfile -t WATCH_METRICS_URLS <"$ENCORE_STATE_DIR/metrics-urls"
else
    WATCH_METRICS_URLS=(http://127.0.0.1:9464/metrics http://127.0.0.1:9465/metrics)
fi

# Sample state. The chosen user and track stay the same from one sample to the next once
# they have a full list (10 rows), so the lists can be watched changing; until then the
# choice is made again at every sample: the user with the longest list, most recently
# refreshed first, and the most played track with neighbours.
WATCH_USER=-1
WATCH_TRACK=-1
WATCH_PREV_NS=""
WATCH_PREV_END=""
WATCH_PREV_COMMITTED=""
WATCH_PREV_COMMIT_SUM=""
WATCH_PREV_COMMIT_COUNT=""
declare -A WATCH_PREV_EVENTS=() WATCH_PREV_REFRESHED=()
# Filled by watch_sample. Keys: partitions (END, COMMITTED, CONSUMED, LAG), processes
# (EVENTS, EVENTS_RATE, STALE, STALE_AGE), "process reason" (REFRESHED), reasons (REFRESH_RATE).
declare -A WATCH_END=() WATCH_COMMITTED=() WATCH_CONSUMED=() WATCH_LAG=()
declare -A WATCH_EVENTS=() WATCH_EVENTS_RATE=() WATCH_STALE=() WATCH_STALE_AGE=()
declare -A WATCH_REFRESHED=() WATCH_REFRESH_RATE=()
WATCH_ROWS=()
WATCH_METRICS_UP=0
WATCH_REBUILDING=0
WATCH_EVENTS_TOTAL_RATE="n/a"
WATCH_PRODUCED_RATE="n/a"
WATCH_COMMITTED_RATE="n/a"
WATCH_COMMIT_SUM=""
WATCH_COMMIT_COUNT=""
WATCH_COMMIT_MS="n/a"
WATCH_COMMITS=""
WATCH_END_TOTAL=""
WATCH_COMMITTED_TOTAL=0
WATCH_LAG_TOTAL=""
WATCH_STALE_TOTAL=""
WATCH_STALE_AGE_MAX=""
WATCH_LAST_COMMIT="-"
WATCH_COMMIT_AGE="-"
WATCH_PG_OK=0

# The queries of one sample, in one psql session. Every row starts with a tag. Errors (tables
# not created yet) are not fatal: the rows of that query are simply missing.
watch_queries() {
    cat <<'SQL'
SELECT 'P', kafka_partition, next_offset FROM encore_progress WHERE topic = :'topic' ORDER BY kafka_partition;
SELECT 'C', coalesce(to_char(max(committed_at) AT TIME ZONE 'UTC', 'HH24:MI:SS.MS'), '-'),
       coalesce(round(extract(epoch FROM clock_timestamp() - max(committed_at))::numeric, 1)::text, '-')
  FROM encore_progress WHERE topic = :'topic';
SELECT 'N', (SELECT count(*) FROM track_stats), (SELECT count(*) FROM dead_letters);
\set uid -1
SELECT coalesce((SELECT user_id FROM (
    (SELECT user_id FROM user_recommendations_ranked WHERE user_id = :prev_user AND rank = 10)
    UNION ALL
    (SELECT user_id FROM user_recommendations_ranked ORDER BY rank DESC, updated_at DESC, user_id LIMIT 1)
  ) AS c LIMIT 1), -1) AS uid \gset
SELECT 'U', :uid, coalesce((SELECT name FROM users WHERE user_id = :uid), '(not in the catalog)'),
       coalesce(to_char(r.updated_at AT TIME ZONE 'UTC', 'HH24:MI:SS'), '-'),
       coalesce(round(extract(epoch FROM clock_timestamp() - r.updated_at)::numeric, 1)::text, '-')
  FROM (SELECT max(updated_at) AS updated_at FROM user_recommendations_ranked WHERE user_id = :uid) AS r
 WHERE :uid >= 0;
SELECT 'R', r.rank, r.score, coalesce(t.title, '?'), coalesce(a.name, '?')
  FROM user_recommendations_ranked r
  LEFT JOIN tracks t ON t.track_id = r.track_id LEFT JOIN artists a ON a.artist_id = t.artist_id
 WHERE r.user_id = :uid AND r.rank <= 10 ORDER BY r.rank;
\set tid -1
SELECT coalesce((SELECT track_id FROM (
    (SELECT track_id FROM track_neighbors_ranked WHERE track_id = :prev_track AND rank = 10)
    UNION ALL
    (SELECT s.track_id FROM track_stats s
      WHERE EXISTS (SELECT 1 FROM track_neighbors n WHERE n.track_id = s.track_id)
      ORDER BY s.plays DESC, s.track_id LIMIT 1)
  ) AS c LIMIT 1), -1) AS tid \gset
SELECT 'T', :tid, coalesce(t.title, '?'), coalesce(a.name, '?'), coalesce(s.plays, 0), coalesce(s.listeners, 0)
  FROM (SELECT :tid::bigint AS track_id) AS c
  LEFT JOIN tracks t ON t.track_id = c.track_id LEFT JOIN artists a ON a.artist_id = t.artist_id
  LEFT JOIN track_stats s ON s.track_id = c.track_id WHERE :tid >= 0;
SELECT 'K', r.rank, r.score, coalesce(t.title, '?'), coalesce(a.name, '?')
  FROM track_neighbors_ranked r
  LEFT JOIN tracks t ON t.track_id = r.neighbor_id LEFT JOIN artists a ON a.artist_id = t.artist_id
 WHERE r.track_id = :tid AND r.rank <= 10 ORDER BY r.rank;
SQL
}

# Prints the samples of the metrics endpoint $1 that the screen uses, one per line:
# `NAME PROCESS KEY VALUE`, KEY the partition or reason label (`-` without one). Nothing when
# the endpoint does not answer (the process is not running, or still starting).
watch_scrape() {
    curl -fsS -m 2 "$1" 2>/dev/null | awk '
        /^encore_/ {
            name = $1; sub(/\{.*/, "", name)
            if (name !~ /^encore_(events_consumed_total|partition_(lag|next_offset|high_watermark)|commit_duration_seconds_(sum|count)|stale_users|stale_refresh_age_seconds|users_refreshed_total|replaying_workers)$/) next
            process = "?"; key = "-"
            if (match($1, /\{.*\}/)) {
                n = split(substr($1, RSTART + 1, RLENGTH - 2), pairs, ",")
                for (i = 1; i <= n; i++) {
                    split(pairs[i], kv, "=")
                    gsub(/"/, "", kv[2])
                    if (kv[1] == "process") process = kv[2]
                    else if (kv[1] == "partition" || kv[1] == "reason") key = kv[2]
                }
            }
            print name, process, key, $NF
        }' || true
}

# Per second, from counter values $1 then $2 taken $3 nanoseconds apart (a counter that went
# down was reset by a restart: it counts from 0 again).
watch_rate() {
    awk -v a="$1" -v b="$2" -v ns="$3" 'BEGIN { d = b - a; if (d < 0) d = b; if (ns > 0) printf "%.0f", d * 1e9 / ns; else print "n/a" }'
}

# The sum and the maximum of the numbers on stdin, or nothing when there are none.
watch_sum() { awk 'NF { s += $1; n++ } END { if (n) printf "%.10g\n", s }'; }
watch_max() { awk 'NF { if (!n || $1 > m) m = $1; n++ } END { if (n) printf "%.10g\n", m }'; }

# Prints " (p0 V0, p1 V1)" for the associative array named $1, keyed by process, in process
# order; nothing when it is empty: the per-process breakdowns of the screen.
watch_breakdown() {
    local -n values="$1"
    local key out=""
    while read -r key; do
        [[ -n "$key" ]] || continue
        out+="${out:+, }p$key ${values[$key]}"
    done < <(printf '%s\n' "${!values[@]}" | sort -n)
    [[ -z "$out" ]] || printf ' (%s)' "$out"
}

# Takes one sample: the metrics of every process, the topic ends, committed offsets, rates,
# the user's and the track's rows.
watch_sample() {
    local now elapsed partition high tag output line url name process key value reason rate
    now="$(date +%s%N)"
    WATCH_END=()
    WATCH_COMMITTED=()
    WATCH_CONSUMED=()
    WATCH_LAG=()
    WATCH_EVENTS=()
    WATCH_EVENTS_RATE=()
    WATCH_STALE=()
    WATCH_STALE_AGE=()
    WATCH_REFRESHED=()
    WATCH_REFRESH_RATE=()
    WATCH_ROWS=()
    WATCH_METRICS_UP=0
    WATCH_REBUILDING=0
    WATCH_COMMIT_SUM=""
    WATCH_COMMIT_COUNT=""
    WATCH_END_TOTAL=""
    WATCH_COMMITTED_TOTAL=0
    WATCH_LAST_COMMIT="-"
    WATCH_COMMIT_AGE="-"
    local -A metric_end=()

    for url in "${WATCH_METRICS_URLS[@]}"; do
        output="$(watch_scrape "$url")"
        [[ -n "$output" ]] || continue
        WATCH_METRICS_UP=$((WATCH_METRICS_UP + 1))
        while read -r name process key value; do
            case "$name" in
                encore_events_consumed_total) WATCH_EVENTS[$process]="$value" ;;
                encore_partition_lag) WATCH_LAG[$key]="$value" ;;
                encore_partition_next_offset) WATCH_CONSUMED[$key]="$value" ;;
                encore_partition_high_watermark) metric_end[$key]="$value" ;;
                encore_commit_duration_seconds_sum) WATCH_COMMIT_SUM="$value" ;;
                encore_commit_duration_seconds_count) WATCH_COMMIT_COUNT="$value" ;;
                encore_stale_users) WATCH_STALE[$process]="$value" ;;
                encore_stale_refresh_age_seconds) WATCH_STALE_AGE[$process]="$value" ;;
                encore_users_refreshed_total) WATCH_REFRESHED["$process $key"]="$value" ;;
                encore_replaying_workers) [[ "$value" =~ ^[0-9]+$ ]] && WATCH_REBUILDING=$((WATCH_REBUILDING + value)) ;;
            esac
        done <<<"$output"
    done

    while read -r partition high; do
        [[ "$partition" =~ ^[0-9]+$ && "$high" =~ ^[0-9]+$ ]] || continue
        WATCH_END[$partition]="$high"
    done < <(topic_high_watermarks "$ENCORE_TOPIC")
    for partition in "${!metric_end[@]}"; do
        [[ -n "${WATCH_END[$partition]:-}" ]] || WATCH_END[$partition]="${metric_end[$partition]}"
    done
    if ((${#WATCH_END[@]})); then
        WATCH_END_TOTAL="$(printf '%s\n' "${WATCH_END[@]}" | watch_sum)"
    fi
    WATCH_LAG_TOTAL="$(printf '%s\n' "${WATCH_LAG[@]}" | watch_sum)"
    WATCH_STALE_TOTAL="$(printf '%s\n' "${WATCH_STALE[@]}" | watch_sum)"
    WATCH_STALE_AGE_MAX="$(printf '%s\n' "${WATCH_STALE_AGE[@]}" | watch_max)"

    WATCH_PG_OK=1
    output="$(watch_queries | pg_sql -v topic="$ENCORE_TOPIC" -v prev_user="$WATCH_USER" \
        -v prev_track="$WATCH_TRACK" 2>/dev/null)" || WATCH_PG_OK=0
    [[ -n "$output" ]] || WATCH_PG_OK=0
    while IFS= read -r line; do
        tag="${line%%$'\x1f'*}"
        case "$tag" in
            P)
                IFS=$'\x1f' read -r _ partition high <<<"$line"
                WATCH_COMMITTED[$partition]="$high"
                WATCH_COMMITTED_TOTAL=$((WATCH_COMMITTED_TOTAL + high))
                ;;
            C) IFS=$'\x1f' read -r _ WATCH_LAST_COMMIT WATCH_COMMIT_AGE <<<"$line" ;;
            U) IFS=$'\x1f' read -r _ WATCH_USER _ <<<"$line"; WATCH_ROWS+=("$line") ;;
            T) IFS=$'\x1f' read -r _ WATCH_TRACK _ <<<"$line"; WATCH_ROWS+=("$line") ;;
            N | R | K) WATCH_ROWS+=("$line") ;;
        esac
    done <<<"$output"

    # Rates and the commits' mean: the change since the previous sample.
    WATCH_COMMIT_MS="n/a"
    WATCH_COMMITS=""
    if [[ -n "$WATCH_PREV_NS" ]]; then
        elapsed=$((now - WATCH_PREV_NS))
        if [[ -n "$WATCH_END_TOTAL" && -n "$WATCH_PREV_END" ]]; then
            WATCH_PRODUCED_RATE="$(watch_rate "$WATCH_PREV_END" "$WATCH_END_TOTAL" "$elapsed")"
        fi
        WATCH_COMMITTED_RATE="$(watch_rate "$WATCH_PREV_COMMITTED" "$WATCH_COMMITTED_TOTAL" "$elapsed")"
        for process in "${!WATCH_EVENTS[@]}"; do
            [[ -n "${WATCH_PREV_EVENTS[$process]:-}" ]] || continue
            WATCH_EVENTS_RATE[$process]="$(watch_rate "${WATCH_PREV_EVENTS[$process]}" "${WATCH_EVENTS[$process]}" "$elapsed")"
        done
        for key in "${!WATCH_REFRESHED[@]}"; do
            [[ -n "${WATCH_PREV_REFRESHED[$key]:-}" ]] || continue
            reason="${key#* }"
            rate="$(watch_rate "${WATCH_PREV_REFRESHED[$key]}" "${WATCH_REFRESHED[$key]}" "$elapsed")"
            [[ "$rate" =~ ^[0-9]+$ ]] && WATCH_REFRESH_RATE[$reason]=$((${WATCH_REFRESH_RATE[$reason]:-0} + rate))
        done
        if [[ -n "$WATCH_COMMIT_COUNT" && -n "$WATCH_PREV_COMMIT_COUNT" ]]; then
            read -r WATCH_COMMITS WATCH_COMMIT_MS < <(awk -v s0="$WATCH_PREV_COMMIT_SUM" -v s1="$WATCH_COMMIT_SUM" \
                -v c0="$WATCH_PREV_COMMIT_COUNT" -v c1="$WATCH_COMMIT_COUNT" 'BEGIN {
                    if (c1 < c0) { c0 = 0; s0 = 0 }
                    n = c1 - c0
                    if (n > 0) printf "%d %.1f\n", n, (s1 - s0) * 1000 / n; else print n, "n/a"
                }')
        fi
    fi
    if ((${#WATCH_EVENTS_RATE[@]})); then
        WATCH_EVENTS_TOTAL_RATE="$(printf '%s\n' "${WATCH_EVENTS_RATE[@]}" | watch_sum)"
    else
        WATCH_EVENTS_TOTAL_RATE="n/a"
    fi
    WATCH_PREV_NS="$now"
    WATCH_PREV_END="$WATCH_END_TOTAL"
    WATCH_PREV_COMMITTED="$WATCH_COMMITTED_TOTAL"
    WATCH_PREV_COMMIT_SUM="$WATCH_COMMIT_SUM"
    WATCH_PREV_COMMIT_COUNT="$WATCH_COMMIT_COUNT"
    WATCH_PREV_EVENTS=()
    for process in "${!WATCH_EVENTS[@]}"; do
        WATCH_PREV_EVENTS[$process]="${WATCH_EVENTS[$process]}"
    done
    WATCH_PREV_REFRESHED=()
    for key in "${!WATCH_REFRESHED[@]}"; do
        WATCH_PREV_REFRESHED[$key]="${WATCH_REFRESHED[$key]}"
    done
}

# Prints the rows of tag $1 of the last sample, fields separated by the unit separator.
watch_rows() {
    local row
    for row in "${WATCH_ROWS[@]}"; do
        [[ "${row%%$'\x1f'*}" == "$1" ]] && printf '%s\n' "${row#*$'\x1f'}"
    done
    return 0
}

# The commit latency as a phrase: the mean of the commits since the previous sample.
watch_commit_phrase() {
    if [[ -z "$WATCH_COMMITS" ]]; then
        printf '%9s ms (served by process 0; two samples needed)' n/a
    elif ((WATCH_COMMITS == 0)); then
        printf '%9s ms: no commit since the last sample' n/a
    else
        printf '%9s ms mean of %s commits since the last sample' "$WATCH_COMMIT_MS" "$WATCH_COMMITS"
    fi
}

# The last sample as a screen (lines of text; the caller positions the cursor).
watch_screen() {
    local partition end consumed committed lag rank score title artist id name plays listeners tracks dead
    local updated updated_age reason refreshed=""
    local -a partitions
    printf 'Kafka %s topic %s  →  encore-flow  →  Postgres 127.0.0.1:%s\n\n' "$ENCORE_BROKERS" "$ENCORE_TOPIC" "$ENCORE_PG_PORT"
    if ((WATCH_PG_OK == 0)); then
        printf '  Postgres is not answering yet (%s)\n' "$ENCORE_POSTGRES_URL"
    fi
    if ((WATCH_METRICS_UP == 0)); then
        printf '  no metrics endpoint answers yet (%s)\n' "${WATCH_METRICS_URLS[*]}"
    elif ((WATCH_METRICS_UP < ${#WATCH_METRICS_URLS[@]})); then
        printf '  %s of %s metrics endpoints answer (%s)\n' "$WATCH_METRICS_UP" "${#WATCH_METRICS_URLS[@]}" "${WATCH_METRICS_URLS[*]}"
    fi
    if ((WATCH_REBUILDING > 0)); then
        printf '  rebuilding the state: %s workers still loading it\n' "$WATCH_REBUILDING"
    fi
    printf '  events/s     %9s consumed%s; produced %s/s, committed %s/s\n' "$WATCH_EVENTS_TOTAL_RATE" \
        "$(watch_breakdown WATCH_EVENTS_RATE)" "$WATCH_PRODUCED_RATE" "$WATCH_COMMITTED_RATE"
    printf '  lag          %9s messages not yet consumed\n' "${WATCH_LAG_TOTAL:-n/a}"
    printf '  commit       %s; last commit %s UTC (%s s ago)\n' "$(watch_commit_phrase)" "$WATCH_LAST_COMMIT" "$WATCH_COMMIT_AGE"
    for reason in active background; do
        [[ -n "${WATCH_REFRESH_RATE[$reason]:-}" ]] && refreshed+="${refreshed:+, }$reason ${WATCH_REFRESH_RATE[$reason]}"
    done
    printf '  stale users  %9s%s; the stalest refreshed %s s ago; refreshed/s: %s\n\n' "${WATCH_STALE_TOTAL:-n/a}" \
        "$(watch_breakdown WATCH_STALE)" "${WATCH_STALE_AGE_MAX:-n/a}" "${refreshed:-n/a}"

    printf '  %-9s %12s %12s %12s %10s\n' partition "topic end" consumed committed lag
    mapfile -t partitions < <(printf '%s\n' "${!WATCH_END[@]}" "${!WATCH_COMMITTED[@]}" "${!WATCH_LAG[@]}" | sort -nu | grep .)
    for partition in "${partitions[@]}"; do
        end="${WATCH_END[$partition]:-n/a}"
        consumed="${WATCH_CONSUMED[$partition]:-n/a}"
        committed="${WATCH_COMMITTED[$partition]:-0}"
        lag="${WATCH_LAG[$partition]:-n/a}"
        printf '  %-9s %12s %12s %12s %10s\n' "$partition" "$end" "$consumed" "$committed" "$lag"
    done
    consumed="n/a"
    ((${#WATCH_CONSUMED[@]})) && consumed="$(printf '%s\n' "${WATCH_CONSUMED[@]}" | watch_sum)"
    printf '  %-9s %12s %12s %12s %10s\n' total "${WATCH_END_TOTAL:-n/a}" "$consumed" "$WATCH_COMMITTED_TOTAL" "${WATCH_LAG_TOTAL:-n/a}"
    IFS=$'\x1f' read -r tracks dead < <(watch_rows N) || true
    printf '  tracks listened to: %s   dead letters: %s\n\n' "${tracks:-?}" "${dead:-?}"

    if IFS=$'\x1f' read -r id name updated updated_age < <(watch_rows U); then
        printf 'Recommendations for user %s (%s), refreshed %s UTC (%s s ago)\n' "$id" "$name" "$updated" "$updated_age"
        while IFS=$'\x1f' read -r rank score title artist; do
            printf '  %2s. %7.4f  %-40.40s %-.30s\n' "$rank" "$score" "$title" "$artist"
        done < <(watch_rows R)
    else
        printf 'Recommendations: none committed yet\n'
    fi
    printf '\n'
    if IFS=$'\x1f' read -r id title artist plays listeners < <(watch_rows T); then
        printf 'Neighbours of track %s "%s" by %s (%s plays, %s listeners)\n' \
            "$id" "$title" "$artist" "$plays" "$listeners"
        while IFS=$'\x1f' read -r rank score title artist; do
            printf '  %2s. %7.4f  %-40.40s %-.30s\n' "$rank" "$score" "$title" "$artist"
        done < <(watch_rows K)
    else
        printf 'Track neighbours: none committed yet\n'
    fi
    printf '\n(metrics: %s; views user_recommendations_ranked and track_neighbors_ranked; titles and artists from tracks, artists)\n' \
        "${WATCH_METRICS_URLS[*]}"
}

# The last sample as one compact line (for logs and pipes).
watch_line() {
    local top=""
    IFS=$'\x1f' read -r _ _ top _ < <(watch_rows R) || true
    printf '%s events/s %s lag %s commit %s ms stale users %s | committed %s last commit %s UTC | user %s top "%s" | track %s: %s neighbours\n' \
        "$(date -u +%H:%M:%S)" "$WATCH_EVENTS_TOTAL_RATE" "${WATCH_LAG_TOTAL:-n/a}" "$WATCH_COMMIT_MS" "${WATCH_STALE_TOTAL:-n/a}" \
        "$WATCH_COMMITTED_TOTAL" "$WATCH_LAST_COMMIT" "$WATCH_USER" "${top:--}" "$WATCH_TRACK" "$(watch_rows K | wc -l)"
}

# Draws text from stdin over the previous frame: home, each line cleared to its end, then the
# rest of the screen cleared (no full clear, so no flicker).
watch_draw() {
    local line frame=$'\033[H'
    while IFS= read -r line; do
        frame+="$line"$'\033[K\n'
    done
    printf '%s\033[J' "$frame"
}

watch_main() {
    local once=0
    case "${1:-}" in
        --once) once=1 ;;
        "") ;;
        -h | --help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    command -v psql >/dev/null || die "psql (the PostgreSQL client) is needed"
    command -v curl >/dev/null || say "curl not found: events/s, lag, commit latency and stale users show n/a"
    if ((once)); then
        # Two samples, for the rates.
        watch_sample
        sleep 1
        watch_sample
        watch_screen
        return 0
    fi
    trap 'printf "\n"; exit 0' INT TERM
    if [[ -t 1 ]]; then
        printf '\033[2J'
        while true; do
            watch_sample
            { printf 'encore live progress   %s UTC   (Ctrl-C to quit)\n\n' "$(date -u +%H:%M:%S)"; watch_screen; } | watch_draw
            sleep 2
        done
    else
        while true; do
            watch_sample
            watch_line
            sleep 10
        done
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    watch_main "$@"
fi
