# shellcheck shell=bash
# CPU time of processes, for the benchmarks (sourced by run.sh and transparent.sh).

# cpu_ticks PID...: user + system CPU of the processes (all their threads) and of their
# children (nginx's workers under its master), in clock ticks; 0 for a process gone.
cpu_ticks() {
    local total=0 p q kids stat
    for p in "$@"; do
        kids=$(cat /proc/"$p"/task/*/children 2>/dev/null || true)
        for q in $p $kids; do
            stat=$(cat /proc/"$q"/stat 2>/dev/null) || continue
            # utime and stime: fields 14 and 15, counted after the ")" that ends the name.
            total=$((total + $(awk '{print $12 + $13}' <<<"${stat##*) }")))
        done
    done
    echo "$total"
}

# cpu_us_per_request TICKS_BEFORE TICKS_AFTER WRK_OUTPUT_FILE: microseconds of CPU per
# request of the wrk run that file holds ("N requests in"), or nothing when it made none.
cpu_us_per_request() {
    local n
    n=$(awk '/ requests in / {print $1}' "$3")
    [ -n "$n" ] && [ "$n" -gt 0 ] || return 0
    python3 -c "print(round(($2 - $1) * 1e6 / $(getconf CLK_TCK) / $n, 2))"
}
