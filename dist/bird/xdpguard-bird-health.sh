#!/bin/sh
# xdpguard-bird-health.sh: the health agent of an xdpguard LB node running
# BIRD 2 (bird-lb.conf). Every INTERVAL it runs
#     xdpguard-lb status --exit-code --pin PIN
# and announces the node's VIPs (`birdc enable vip4 vip6`) while that exits
# 0, withdraws them (`birdc disable ...`) while it does not: detached (1),
# attached nowhere (3), or no VIP with an active backend (4). It acts on a
# change, and re-asserts the state every REASSERT rounds, so a BIRD that
# restarted (its VIP protocols start disabled) is re-enabled. On SIGTERM or
# SIGINT it withdraws and exits: a node without its agent is not announced.
#
# Start it after the node's configuration is applied (xdpguard apply, or
# the xdpguard-lb commands): the check passes as soon as one VIP has one
# active backend. docs/deployment.md has the whole procedure.
#
# Usage: xdpguard-bird-health.sh [-s BIRD_SOCKET] [-p PIN] [-i INTERVAL] [-r REASSERT] [PROTOCOL...]
#   -s  BIRD's control socket (default /run/bird/bird.ctl)
#   -p  the LB's pin directory (default /sys/fs/bpf/xdpguard-lb)
#   -i  seconds between checks (default 0.1; fractions need GNU sleep)
#   -r  re-assert every this many rounds (default 50)
#   PROTOCOL...  the BIRD protocols that hold the VIP routes (default: vip4 vip6)
# Environment: XDPGUARD_LB, the xdpguard-lb binary (default: xdpguard-lb on PATH).
# Needs: birdc (Debian: bird2), xdpguard-lb, sleep. Runs as root (bpffs, BIRD's socket).
set -u

socket=/run/bird/bird.ctl
pin=/sys/fs/bpf/xdpguard-lb
interval=0.1
reassert=50
while getopts s:p:i:r: opt; do
    case $opt in
        s) socket=$OPTARG ;;
        p) pin=$OPTARG ;;
        i) interval=$OPTARG ;;
        r) reassert=$OPTARG ;;
        *) echo "usage: $0 [-s BIRD_SOCKET] [-p PIN] [-i INTERVAL] [-r REASSERT] [PROTOCOL...]" >&2; exit 2 ;;
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

state=unknown
trap 'birdc_all disable; echo "xdpguard-bird-health: stopped, withdrawn" >&2; exit 0' TERM INT
n=0
while :; do
    if "$lb" status --exit-code --pin "$pin" >/dev/null 2>&1; then want=enable; else want=disable; fi
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
