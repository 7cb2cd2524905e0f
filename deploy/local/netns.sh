# shellcheck shell=bash
# Network-namespace "pods" on one machine, for deploy/local/mesh and
# tests/bench/transparent.sh (sourced, not run). A hub namespace holds a bridge br0;
# each pod is a namespace with a veth pair to the bridge (eth0 inside the pod, v-NAME in
# the hub), an address in a private /24 and a default route via the hub. Everything made
# is recorded under $NETNS_STATE so that it can be undone by name and by pid:
#   $NETNS_STATE/netns        one namespace name a line, each one this made
#   $NETNS_STATE/pids/NAME    "PID STARTTIME" of a background process (netns_spawn)
#   $NETNS_STATE/log/NAME.log its stdout and stderr
# The caller sets NETNS_STATE (a directory) before calling any of these.

# Prints why this machine cannot run pods in namespaces with capture rules (root, ip,
# iptables, setpriv, a namespace that can be made and take a nat rule) and returns 1;
# prints nothing and returns 0 when it can. PROBE_NAME names the throwaway namespace.
netns_usable() {
    local probe=${1:-tnetns-probe$$} t
    if [ "$(id -u)" != 0 ]; then
        echo "not running as root"
        return 1
    fi
    for t in ip iptables iptables-restore setpriv; do
        command -v "$t" >/dev/null 2>&1 || { echo "$t is not installed"; return 1; }
    done
    if ! ip netns add "$probe" 2>/dev/null; then
        echo "cannot create a network namespace (ip netns add failed)"
        return 1
    fi
    if ! ip netns exec "$probe" iptables -t nat -S >/dev/null 2>&1; then
        ip netns del "$probe" 2>/dev/null
        echo "iptables cannot use the nat table inside a network namespace"
        return 1
    fi
    ip netns del "$probe" 2>/dev/null
    return 0
}

# nsx NS CMD...: runs CMD inside namespace NS.
nsx() {
    local n=$1
    shift
    ip netns exec "$n" "$@"
}

# netns_hub NS CIDR: makes namespace NS with bridge br0 holding address CIDR (the pods'
# gateway), recorded for netns_teardown.
netns_hub() {
    local n=$1 cidr=$2
    ip netns add "$n"
    echo "$n" >>"$NETNS_STATE/netns"
    nsx "$n" ip link set lo up
    nsx "$n" ip link add br0 type bridge
    nsx "$n" ip addr add "$cidr" dev br0
    nsx "$n" ip link set br0 up
}

# netns_pod HUB NS SHORT CIDR GATEWAY: makes pod namespace NS with eth0 = CIDR, joined to
# HUB's bridge by veth v-SHORT (SHORT at most 13 characters), default route via GATEWAY.
netns_pod() {
    local hub=$1 n=$2 short=$3 cidr=$4 gw=$5
    ip netns add "$n"
    echo "$n" >>"$NETNS_STATE/netns"
    nsx "$n" ip link set lo up
    nsx "$hub" ip link add "v-$short" type veth peer name eth0 netns "$n"
    nsx "$hub" ip link set "v-$short" master br0 up
    nsx "$n" ip addr add "$cidr" dev eth0
    nsx "$n" ip link set eth0 up
    nsx "$n" ip route add default via "$gw"
}

# netns_capture NS SCRIPT [OPTION...]: installs the capture rules (IPv4) in NS with
# tether-iptables SCRIPT and its OPTIONs and checks them; returns non-zero with the
# script's words on stderr if not.
netns_capture() {
    local n=$1 script=$2
    shift 2
    nsx "$n" "$script" install --ipv4-only "$@" >/dev/null
    nsx "$n" "$script" check --ipv4-only "$@" >/dev/null
}

# netns_spawn NAME CMD...: starts program CMD (not a shell function) in the background (stdin /dev/null, output to
# $NETNS_STATE/log/NAME.log) and records its pid with its start time, so that a later
# netns_stop never signals a recycled pid. Sets SPAWNED_PID.
netns_spawn() {
    local name=$1
    shift
    if [ "$(type -t "$1")" != file ]; then # a function would run in a subshell: wrong pid
        echo "netns_spawn: $1 is not a program (use ip netns exec, not nsx)" >&2
        return 2
    fi
    mkdir -p "$NETNS_STATE/pids" "$NETNS_STATE/log"
    "$@" </dev/null >"$NETNS_STATE/log/$name.log" 2>&1 &
    SPAWNED_PID=$!
    echo "$SPAWNED_PID $(netns_starttime "$SPAWNED_PID")" >"$NETNS_STATE/pids/$name"
}

# netns_starttime PID: the process's start time in clock ticks (field 22 of its stat).
netns_starttime() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    stat=${stat##*) }
    # shellcheck disable=SC2086 # split into fields on purpose
    set -- $stat
    echo "${20}"
}

# netns_stop NAME...: stops each recorded process (TERM, up to 5 s, then KILL) if its pid
# still names the process that was started, and forgets it.
netns_stop() {
    local name pid start live=()
    for name in "$@"; do
        [ -f "$NETNS_STATE/pids/$name" ] || continue
        read -r pid start <"$NETNS_STATE/pids/$name"
        if [ -n "$pid" ] && [ "$(netns_starttime "$pid")" = "$start" ]; then
            kill -TERM "$pid" 2>/dev/null && live+=("$pid")
        fi
        rm -f "$NETNS_STATE/pids/$name"
    done
    for pid in "${live[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    return 0
}

# netns_teardown: stops every recorded process, then deletes every recorded namespace
# (their veths, the bridge and the capture rules go with them).
netns_teardown() {
    local n names=()
    if [ -d "$NETNS_STATE/pids" ]; then
        for n in "$NETNS_STATE"/pids/*; do
            [ -e "$n" ] && names+=("${n##*/}")
        done
        netns_stop "${names[@]}"
    fi
    if [ -f "$NETNS_STATE/netns" ]; then
        while read -r n; do
            [ -n "$n" ] && ip netns del "$n" 2>/dev/null
        done <"$NETNS_STATE/netns"
        rm -f "$NETNS_STATE/netns"
    fi
    return 0
}

# netns_wait_http NS URL [TRIES]: waits (0.1 s a try, default 100) for URL to answer 200
# from inside NS.
netns_wait_http() {
    local n=$1 url=$2 tries=${3:-100}
    for _ in $(seq "$tries"); do
        nsx "$n" curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
