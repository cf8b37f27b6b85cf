#!/bin/sh
# xdpguard-bird-health.sh: the health agent of an xdpguard LB node running
# BIRD 2 (bird-lb.conf). Every INTERVAL it runs
#     xdpguard-lb status --exit-code --pin PIN
# and announces the node's VIPs (`birdc enable vip4 vip6`) while that exits
# 0, withdraws them (`birdc disable ...`) while it does not: detached (1),
# attached nowhere (3), no VIP with a reachable active backend (4), an interface
# it was attached to lost (6), no VIP left whose backends' family is forwarded
# (7: IP forwarding off), or no VIP left that XDP can forward to (8: backends
# routed out of an interface it may not redirect to). It acts on a change,
# and re-asserts the state every REASSERT rounds, so a BIRD that restarted
# (its VIP protocols start disabled) is re-enabled. On SIGTERM or SIGINT it
# withdraws and exits: a node without its agent is not announced.
#
# Without -c, start it after the node's configuration is applied (xdpguard
# apply, or the xdpguard-lb commands): the check passes as soon as one VIP
# has one active backend. With -c CONFIG (the fleet's file, as applied on
# this node) it also requires the LB's state digest to be the one the file
# promises (`status --exit-code --expect-digest`, exit 5 otherwise), so a
# half-configured or stale node is never announced, whenever the agent
# starts. It computes that digest (`xdpguard-lb digest --config`) at start
# and again whenever the file is replaced or changed (its inode, size or
# mtime). An announced node stays announced through a mismatch of up to
# GRACE rounds (an apply in progress: the file and the state change one
# after the other), and is withdrawn when it lasts longer. Put a new file
# in place once it is applied (apply a copy in the same directory, then
# rename it over CONFIG), so a file that fails to apply withdraws nothing.
# A file that cannot be read keeps the last digest read (none: withdrawn).
# Not with `xdpguard-lb health` on the node: a backend it drains makes the
# node differ from CONFIG (docs/deployment.md).
# docs/deployment.md has the whole procedure.
#
# Usage: xdpguard-bird-health.sh [-s BIRD_SOCKET] [-p PIN] [-c CONFIG [-g GRACE]] [-i INTERVAL] [-r REASSERT] [PROTOCOL...]
#   -s  BIRD's control socket (default /run/bird/bird.ctl)
#   -p  the LB's pin directory (default /sys/fs/bpf/xdpguard-lb)
#   -c  the configuration file (xdpguard apply) whose [[lb]] pinned at PIN
#       this node must match (default: none, no digest check)
#   -g  rounds an announced node may differ from CONFIG (default 50)
#   -i  seconds between checks (default 0.1; fractions need GNU sleep)
#   -r  re-assert every this many rounds (default 50)
#   PROTOCOL...  the BIRD protocols that hold the VIP routes (default: vip4 vip6)
# Environment: XDPGUARD_LB, the xdpguard-lb binary (default: xdpguard-lb on PATH).
# Needs: birdc (Debian: bird2), xdpguard-lb, sleep, stat (coreutils). Runs as
# root (bpffs, BIRD's socket).
set -u

socket=/run/bird/bird.ctl
pin=/sys/fs/bpf/xdpguard-lb
config=
grace=50
interval=0.1
reassert=50
while getopts s:p:c:g:i:r: opt; do
    case $opt in
        s) socket=$OPTARG ;;
        p) pin=$OPTARG ;;
        c) config=$OPTARG ;;
        g) grace=$OPTARG ;;
        i) interval=$OPTARG ;;
        r) reassert=$OPTARG ;;
        *) echo "usage: $0 [-s BIRD_SOCKET] [-p PIN] [-c CONFIG [-g GRACE]] [-i INTERVAL] [-r REASSERT] [PROTOCOL...]" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || set -- vip4 vip6
protocols=$* # BIRD protocol names: no spaces
lb=${XDPGUARD_LB:-xdpguard-lb}

# birdc VERB (enable|disable) on every protocol; fails unless BIRD confirms
# each ("vip4: enabled", "vip4: already enabled", ...).
birdc_all() {
    verb=$1
    for p in $protocols; do
        out=$(birdc -s "$socket" "$verb" "$p" 2>&1) || { echo "xdpguard-bird-health: birdc $verb $p: $out" >&2; return 1; }
        case $out in
            *"$p: "*"${verb}d"*) ;;
            *) echo "xdpguard-bird-health: birdc $verb $p: $out" >&2; return 1 ;;
        esac
    done
}

# With -c: the digest the file promises, read again when the file changed.
seen=
expected=
expect_config() {
    now=$(stat -L -c '%i %s %Y' "$config" 2>/dev/null) || now=missing
    [ "$now" = "$seen" ] && return
    seen=$now
    if out=$("$lb" digest --config "$config" --pin "$pin" 2>&1); then
        # The first line is "overall HEX".
        expected=${out#overall }
        expected=${expected%%[!0-9a-f]*}
        echo "xdpguard-bird-health: $config promises digest $expected" >&2
    else
        echo "xdpguard-bird-health: $config: $out (keeping digest ${expected:-none})" >&2
    fi
}

# The health check: `status --exit-code`'s code (0 serving, 5 another
# digest than CONFIG's), 1 without a digest to expect.
check() {
    if [ -z "$config" ]; then
        "$lb" status --exit-code --pin "$pin" >/dev/null 2>&1
    else
        expect_config
        [ -n "$expected" ] || return 1
        "$lb" status --exit-code --pin "$pin" --expect-digest "$expected" >/dev/null 2>&1
    fi
}

state=unknown
trap 'birdc_all disable; echo "xdpguard-bird-health: stopped, withdrawn" >&2; exit 0' TERM INT
n=0
differing=0 # rounds an announced node has differed from CONFIG
while :; do
    check
    code=$?
    if [ "$code" -eq 0 ]; then
        want=enable
        differing=0
    elif [ "$code" -eq 5 ] && [ "$state" = enable ] && [ "$differing" -lt "$grace" ]; then
        [ "$differing" -eq 0 ] && echo "xdpguard-bird-health: LB at $pin differs from $config (announced for up to $grace rounds)" >&2
        want=enable
        differing=$((differing + 1))
    else
        want=disable
        differing=0
    fi
    n=$((n + 1))
    if [ "$want" != "$state" ] || [ $((n % reassert)) -eq 0 ]; then
        if birdc_all "$want"; then
            [ "$want" != "$state" ] && echo "xdpguard-bird-health: $want $protocols (LB at $pin)" >&2
            state=$want
        else
            state=unknown # BIRD not up (yet): try again next round
        fi
    fi
    sleep "$interval" &
    wait $!
done
