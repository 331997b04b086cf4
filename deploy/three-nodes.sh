#!/usr/bin/env bash
# Three flagshare nodes of one replicated operator, on this machine's loopback, made the
# way they are made on three machines: the first with `init --cluster`, each other from an
# invitation (`admin cluster invite` on the leader, the folder copied to the new machine,
# `init --join` there), then added with `admin cluster add-node`. On real machines, run
# each node's commands on its own machine, with its own --host name and --listen address.
#
#   deploy/three-nodes.sh DIR          # make and start the three, then `admin cluster list`
#   deploy/three-nodes.sh DIR stop     # stop them (SIGTERM)
#
# FLAGSHARE names the binary (default: flagshare on PATH); PORTS the three ports
# (default "50061 50062 50063"). Each node's log is DIR/node-N/serve.log.
set -euo pipefail

dir=${1:?usage: three-nodes.sh DIR [stop]}
flagshare=${FLAGSHARE:-flagshare}
read -r -a ports <<<"${PORTS:-50061 50062 50063}"

if [[ ${2:-} == stop ]]; then
    for n in 1 2 3; do
        if [[ -f $dir/node-$n/serve.pid ]]; then
            kill "$(cat "$dir/node-$n/serve.pid")" 2>/dev/null || true
        fi
    done
    exit 0
fi

endpoint() { echo "https://127.0.0.1:${ports[$1 - 1]}"; }

# Starts node $1 in the background and waits until it listens.
start() {
    local log=$dir/node-$1/serve.log
    # Each its own metrics port (any free one here; its log says which).
    "$flagshare" serve --data "$dir/node-$1" --metrics-listen 127.0.0.1:0 >"$log" 2>&1 &
    echo $! >"$dir/node-$1/serve.pid"
    for _ in $(seq 1 600); do
        if grep -q "listening on" "$log"; then
            return 0
        fi
        sleep 0.1
    done
    echo "node $1 did not start: see $log" >&2
    return 1
}

mkdir -p "$dir"
# Node 1: the operator's PKI (keep pki/ca.key offline once the nodes are made), its first
# admin, the principal node-1 it calls the other nodes with, every commit on its Raft log.
"$flagshare" init --cluster --data "$dir/node-1" --operator "Example Consortium" --listen "127.0.0.1:${ports[0]}"
start 1
admin=(--bundle "$dir/node-1/clients/admin" --endpoint "$(endpoint 1)")
for n in 2 3; do
    # On the leader: the new node's principal and server certificate, and what it trusts.
    "$flagshare" admin "${admin[@]}" cluster invite --name "node-$n" --host 127.0.0.1 --out "$dir/invitation-$n"
    # On the new machine: its data folder from the invitation (no database, no CA key).
    "$flagshare" init --join "$dir/invitation-$n" --node-id "$n" --data "$dir/node-$n" --listen "127.0.0.1:${ports[$n - 1]}"
    start "$n"
    # On the leader: it receives a snapshot, then the log, then votes.
    "$flagshare" admin "${admin[@]}" cluster add-node --id "$n" --address "$(endpoint "$n")" --principal "node-$n"
done
# A member's bundle naming all three nodes: its calls go to any one that answers.
"$flagshare" admin --bundle "$dir/node-1/clients/admin" --endpoint "$(endpoint 1),$(endpoint 2),$(endpoint 3)" \
    member add platform-a --out "$dir/platform-a" >/dev/null
"$flagshare" admin "${admin[@]}" cluster list
echo "member bundle: $dir/platform-a; stop with: $0 $dir stop"
