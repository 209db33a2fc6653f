#!/usr/bin/env bash
# Live progress of the pipeline on the local stack: events/s produced and committed, the topic
# end, committed offset and lag per partition, the last commit time, and one user's
# recommendations and one track's neighbours with titles and artists from the catalog.
#
#   deploy/watch.sh            redraw every 2 s until Ctrl-C (a line every 10 s when stdout is
#                              not a terminal)
#   deploy/watch.sh --once     print one sample and exit
#
# deploy/run.sh sources this file and calls watch_sample / watch_screen / watch_line itself.
#
# Where the figures come from:
# * topic end per partition: the high watermarks in Tansu's sqlite storage file
#   (deploy/state/tansu/tansu.db, read-only; Tansu's CLI has no offsets command). With memory
#   storage or without sqlite3 the topic end, lag and produced rate are shown as n/a;
# * committed offsets and time: Postgres table encore_progress, written by encore-flow in the
#   same transaction as the results (so "committed" means visible in the tables);
# * events/s: the change of those sums between two samples.
# Configuration: the variables of deploy/lib.sh (ports, topic, state dir).

# shellcheck source=deploy/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Sample state. The chosen user and track stay the same from one sample to the next once
# they have a full list (10 rows), so the lists can be watched changing; until then the
# choice is made again at every sample.
WATCH_USER=-1
WATCH_TRACK=-1
WATCH_PREV_NS=""
WATCH_PREV_END=""
WATCH_PREV_COMMITTED=""
# Filled by watch_sample.
declare -A WATCH_END=() WATCH_COMMITTED=()
WATCH_ROWS=()
WATCH_PRODUCED_RATE="n/a"
WATCH_COMMITTED_RATE="n/a"
WATCH_END_TOTAL=""
WATCH_COMMITTED_TOTAL=0
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
    (SELECT user_id FROM user_recommendations WHERE user_id = :prev_user OFFSET 9 LIMIT 1)
    UNION ALL
    (SELECT user_id FROM user_recommendations GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 1)
  ) AS c LIMIT 1), -1) AS uid \gset
SELECT 'U', :uid, coalesce((SELECT name FROM users WHERE user_id = :uid), '(not in the catalog)') WHERE :uid >= 0;
SELECT 'R', r.rank, r.score, coalesce(t.title, '?'), coalesce(a.name, '?')
  FROM user_recommendations_ranked r
  LEFT JOIN tracks t ON t.track_id = r.track_id LEFT JOIN artists a ON a.artist_id = t.artist_id
 WHERE r.user_id = :uid AND r.rank <= 10 ORDER BY r.rank;
\set tid -1
SELECT coalesce((SELECT track_id FROM (
    (SELECT track_id FROM track_neighbors WHERE track_id = :prev_track OFFSET 9 LIMIT 1)
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

# Events per second between two totals $1 and $2 taken $3 nanoseconds apart.
watch_rate() {
    awk -v a="$1" -v b="$2" -v ns="$3" 'BEGIN { if (ns > 0) printf "%.0f", (b - a) * 1e9 / ns; else print "n/a" }'
}

# Takes one sample: topic ends, committed offsets, rates, the user's and the track's rows.
watch_sample() {
    local now partition high tag output line
    now="$(date +%s%N)"
    WATCH_END=()
    WATCH_COMMITTED=()
    WATCH_ROWS=()
    WATCH_END_TOTAL=""
    WATCH_COMMITTED_TOTAL=0
    WATCH_LAST_COMMIT="-"
    WATCH_COMMIT_AGE="-"

    while read -r partition high; do
        [[ "$partition" =~ ^[0-9]+$ && "$high" =~ ^[0-9]+$ ]] || continue
        WATCH_END[$partition]="$high"
        WATCH_END_TOTAL=$((${WATCH_END_TOTAL:-0} + high))
    done < <(topic_high_watermarks "$ENCORE_TOPIC")

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

    if [[ -n "$WATCH_PREV_NS" ]]; then
        if [[ -n "$WATCH_END_TOTAL" && -n "$WATCH_PREV_END" ]]; then
            WATCH_PRODUCED_RATE="$(watch_rate "$WATCH_PREV_END" "$WATCH_END_TOTAL" $((now - WATCH_PREV_NS)))"
        fi
        WATCH_COMMITTED_RATE="$(watch_rate "$WATCH_PREV_COMMITTED" "$WATCH_COMMITTED_TOTAL" $((now - WATCH_PREV_NS)))"
    fi
    WATCH_PREV_NS="$now"
    WATCH_PREV_END="$WATCH_END_TOTAL"
    WATCH_PREV_COMMITTED="$WATCH_COMMITTED_TOTAL"
}

# Prints the rows of tag $1 of the last sample, fields separated by the unit separator.
watch_rows() {
    local row
    for row in "${WATCH_ROWS[@]}"; do
        [[ "${row%%$'\x1f'*}" == "$1" ]] && printf '%s\n' "${row#*$'\x1f'}"
    done
    return 0
}

# The last sample as a screen (lines of text; the caller positions the cursor).
watch_screen() {
    local partition end committed lag rank score title artist id name plays listeners tracks dead
    local -a partitions
    printf 'Kafka %s topic %s  →  encore-flow  →  Postgres 127.0.0.1:%s\n\n' "$ENCORE_BROKERS" "$ENCORE_TOPIC" "$ENCORE_PG_PORT"
    if ((WATCH_PG_OK == 0)); then
        printf '  Postgres is not answering yet (%s)\n' "$ENCORE_POSTGRES_URL"
    fi
    printf '  produced   %8s events/s   (topic end: %s)\n' "$WATCH_PRODUCED_RATE" \
        "$([[ -n "$WATCH_END_TOTAL" ]] && echo "Tansu's storage high watermarks" || echo "n/a without Tansu sqlite storage and sqlite3")"
    printf '  committed  %8s events/s   last commit %s UTC (%s s ago)\n\n' "$WATCH_COMMITTED_RATE" \
        "$WATCH_LAST_COMMIT" "$WATCH_COMMIT_AGE"
    printf '  %-9s %12s %12s %10s\n' partition "topic end" committed lag
    mapfile -t partitions < <(printf '%s\n' "${!WATCH_END[@]}" "${!WATCH_COMMITTED[@]}" | sort -nu | grep .)
    for partition in "${partitions[@]}"; do
        end="${WATCH_END[$partition]:-}"
        committed="${WATCH_COMMITTED[$partition]:-0}"
        lag="n/a"
        [[ -n "$end" ]] && lag=$((end - committed))
        printf '  %-9s %12s %12s %10s\n' "$partition" "${end:-n/a}" "$committed" "$lag"
    done
    end="n/a"
    lag="n/a"
    if [[ -n "$WATCH_END_TOTAL" ]]; then
        end="$WATCH_END_TOTAL"
        lag=$((WATCH_END_TOTAL - WATCH_COMMITTED_TOTAL))
    fi
    printf '  %-9s %12s %12s %10s\n' total "$end" "$WATCH_COMMITTED_TOTAL" "$lag"
    IFS=$'\x1f' read -r tracks dead < <(watch_rows N) || true
    printf '  tracks listened to: %s   dead letters: %s\n\n' "${tracks:-?}" "${dead:-?}"

    if IFS=$'\x1f' read -r id name < <(watch_rows U); then
        printf 'Recommendations for user %s (%s)\n' "$id" "$name"
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
    printf '\n(views user_recommendations_ranked and track_neighbors_ranked; titles and artists from tracks, artists)\n'
}

# The last sample as one compact line (for logs and pipes).
watch_line() {
    local lag="n/a" top=""
    [[ -n "$WATCH_END_TOTAL" ]] && lag=$((WATCH_END_TOTAL - WATCH_COMMITTED_TOTAL))
    IFS=$'\x1f' read -r _ _ top _ < <(watch_rows R) || true
    printf '%s produced %s/s committed %s/s end %s committed %s lag %s last commit %s UTC | user %s top "%s" | track %s: %s neighbours\n' \
        "$(date -u +%H:%M:%S)" "$WATCH_PRODUCED_RATE" "$WATCH_COMMITTED_RATE" "${WATCH_END_TOTAL:-n/a}" \
        "$WATCH_COMMITTED_TOTAL" "$lag" "$WATCH_LAST_COMMIT" "$WATCH_USER" "${top:--}" "$WATCH_TRACK" \
        "$(watch_rows K | wc -l)"
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
        -h | --help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; return 0 ;;
        *) die "unknown argument '$1' (try --help)" ;;
    esac
    command -v psql >/dev/null || die "psql (the PostgreSQL client) is needed"
    if ((once)); then
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
