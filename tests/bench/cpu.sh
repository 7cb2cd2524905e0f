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

# record_cpu RESULTS CHAIN KIND ROUND TICKS_BEFORE TICKS_AFTER WRK_OUTPUT_FILE: appends
# "CHAIN cpu ROUND US nan nan 0" to RESULTS (the results' line shape; "cpu_KIND" for a load
# other than keepalive), US the microseconds of CPU per request of the wrk run that file
# holds ("N requests in"); nothing when the run made no request.
record_cpu() {
    local n key=cpu
    n=$(awk '/ requests in / {print $1}' "$7")
    [ -n "$n" ] && [ "$n" -gt 0 ] || return 0
    [ "$3" = keepalive ] || key=cpu_$3
    echo "$2 $key $4 $(python3 -c "print(round(($6 - $5) * 1e6 / $(getconf CLK_TCK) / $n, 2))") nan nan 0" >>"$1"
}
