#!/usr/bin/env bash
# layerhop real-network testbed (issue 6): sites as Linux network namespaces behind a
# rate-limited uplink, running the real `layerhop` binary.
#
#   cloud ns (seed, 10.254.0.1 on lo)
#     ├─ veth "s<S>" 10.255.S.1/30  ══ tbf ══  veth "up0" 10.255.S.2/30 ─ gateway ns of site S
#     │                                                                   (ip_forward=1)
#     │                                       veth "lan0" 10.S.0.1/24 ─┘
#     │                                                │
#     │                      bridge ns of site S: br0 (the site LAN; multicast, so mDNS works)
#     │                                                │
#     │                      device ns S/i: veth "eth0" 10.S.0.(10+i)/24, default via 10.S.0.1
#
# Plain routing, no NAT: the cloud routes 10.S.0.0/24 back via each gateway, so a path between
# two sites exists (through both uplinks and the cloud); the report counts what the cloud
# forwarded (Ip ForwDatagrams) to show that no device used it.
#
# Every interface and address lives inside namespaces named "lh6-<pid>-..."; nothing is created
# in the root namespace and no multicast leaves the site bridges. An EXIT/INT/TERM trap stops
# every process and deletes every namespace of the run; a run first removes the leftovers of
# earlier runs whose process is gone.
#
# Needs root, iproute2 (ip, tc with the tbf qdisc), jq and the layerhop binary.
# `testbed.sh help` lists the options. The last line of `run` is `RESULT {json}`.
set -euo pipefail

PREFIX=lh6
ME=$$
P="$PREFIX-$ME"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/../.." && pwd)"

usage() {
    cat <<'EOF'
usage: testbed.sh run [options]      build the testbed, publish one release, report, tear down
       testbed.sh cleanup            remove namespaces/processes/dirs left by dead runs
       testbed.sh help

run options:
  --sites N           sites that share (default 1)
  --devices M         devices per site (default 10)
  --size-mib S        size of the generated release (incompressible, default 16)
  --data DIR          publish DIR (a directory of model files) instead of generated data
  --no-sharing        site_sharing = false on every device of the sharing sites
  --baseline-site     add one more site of M devices with site_sharing = false, same release
  --cut-uplink S      take site S's uplink down mid-release, then up again
  --cut-at PCT        cut when the site's uplink has received PCT% of the release (default 40)
  --cut-secs T        how long the uplink stays down (default 20)
  --rate R            tbf rate of every uplink, both directions (default 20mbit)
  --binary PATH       layerhop binary (default target/release/layerhop; copied into the run dir)
  --workdir DIR       put homes and logs in DIR (new or empty; kept); default a temp dir, removed at exit
  --keep              keep the temp dir
  --timeout SECS      deadline for every device to complete (default 300)
  --set KEY=VALUE     set a key in every device's config.toml (repeatable; VALUE in TOML)
  --baseline-set KEY=VALUE  the same, for the baseline site's devices only
  --idle-secs T       before publishing, measure T seconds of idle uplink traffic (default 0)
EOF
}

log() { printf '[testbed %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------- cleanup of leftovers

# Whether the run whose script pid is $1 is still alive.
run_alive() {
    local pid=$1
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'testbed.sh'
}

kill_ns_pids() {
    local ns=$1 pids
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z "$pids" ]] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local deadline=$(( $(now_ms) + 5000 ))
    while [[ -n "$(ip netns pids "$ns" 2>/dev/null || true)" ]] && (( $(now_ms) < deadline )); do sleep 0.1; done
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    # shellcheck disable=SC2086
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
}

# Remove namespaces and temp dirs of runs (prefix lh6-<pid>-) whose script is gone.
cleanup_leftovers() {
    local ns pid d
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-[0-9]+-" || true); do
        pid=${ns#"$PREFIX-"}; pid=${pid%%-*}
        if [[ "$pid" != "$ME" ]] && ! run_alive "$pid"; then
            log "removing leftover namespace $ns"
            kill_ns_pids "$ns"
            ip netns del "$ns" 2>/dev/null || true
        fi
    done
    for d in "${TMPDIR:-/tmp}"/"$PREFIX"-[0-9]*.*; do
        [[ -d "$d" ]] || continue
        pid=$(basename "$d"); pid=${pid#"$PREFIX-"}; pid=${pid%%.*}
        if [[ "$pid" != "$ME" ]] && ! run_alive "$pid"; then
            log "removing leftover dir $d"
            rm -rf "$d"
        fi
    done
}

# ---------------------------------------------------------------- state and teardown

NAMESPACES=()
NODE_PIDS=()
declare -a DEV_PID=() PEER_ID=() OFF_MI=() OFF_MO=() OFF_LI=() OFF_LO=() OFF_CS=() OFF_CP=()
HEALS=0
WORK=""
OWN_WORK=0
KEEP=0

teardown() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if ((${#NODE_PIDS[@]})); then
        kill -TERM "${NODE_PIDS[@]}" 2>/dev/null
        local deadline=$(( $(now_ms) + 10000 )) p alive
        while :; do
            alive=0
            for p in "${NODE_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
            ((alive)) || break
            (( $(now_ms) > deadline )) && { kill -KILL "${NODE_PIDS[@]}" 2>/dev/null; break; }
            sleep 0.1
        done
        wait 2>/dev/null
    fi
    local ns
    for ns in "${NAMESPACES[@]}"; do
        kill_ns_pids "$ns"
        ip netns del "$ns" 2>/dev/null
    done
    if ((OWN_WORK)) && [[ -n "$WORK" ]]; then
        if ((KEEP)); then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}

on_signal() { log "interrupted"; exit 130; }

# ---------------------------------------------------------------- topology

ns_add() {
    ip netns add "$1"
    NAMESPACES+=("$1")
    ip -n "$1" link set lo up
}

CLOUD="$P-cloud"
CLOUD_IP=10.254.0.1
gw_ns() { echo "$P-s$1-gw"; }
lan_ns() { echo "$P-s$1-lan"; }
dev_ns() { echo "$P-s$1-d$2"; }

make_cloud() {
    ns_add "$CLOUD"
    ip -n "$CLOUD" addr add "$CLOUD_IP/32" dev lo
    ip netns exec "$CLOUD" sysctl -qw net.ipv4.ip_forward=1
}

# Site $1 with $2 devices.
make_site() {
    local s=$1 n=$2 gw lan i dev
    gw=$(gw_ns "$s"); lan=$(lan_ns "$s")
    ns_add "$gw"; ns_add "$lan"
    ip netns exec "$gw" sysctl -qw net.ipv4.ip_forward=1
    # Uplink: cloud "s<S>" <-> gateway "up0", shaped on egress at both ends.
    ip -n "$CLOUD" link add name "s$s" type veth peer name up0 netns "$gw"
    ip -n "$CLOUD" addr add "10.255.$s.1/30" dev "s$s"
    ip -n "$gw" addr add "10.255.$s.2/30" dev up0
    ip -n "$CLOUD" link set "s$s" up
    ip -n "$gw" link set up0 up
    # One skb per wire packet on the uplink (no GSO/TSO aggregates), so the byte and packet
    # counters are those of a real link, headers of every packet included.
    ip -n "$CLOUD" link set dev "s$s" gso_max_segs 1
    ip -n "$gw" link set dev up0 gso_max_segs 1
    tc -n "$CLOUD" qdisc add dev "s$s" root tbf rate "$RATE" burst 32kbit latency 400ms
    tc -n "$gw" qdisc add dev up0 root tbf rate "$RATE" burst 32kbit latency 400ms
    ip -n "$CLOUD" route add "10.$s.0.0/24" via "10.255.$s.2" dev "s$s"
    # Site LAN: a bridge in its own namespace; the gateway's "lan0" is one port.
    ip -n "$lan" link add name br0 type bridge
    ip -n "$lan" link set br0 up
    ip -n "$gw" link add name lan0 type veth peer name gw netns "$lan"
    ip -n "$lan" link set gw master br0
    ip -n "$lan" link set gw up
    ip -n "$gw" addr add "10.$s.0.1/24" dev lan0
    ip -n "$gw" link set lan0 up
    ip -n "$gw" route add default via "10.255.$s.1" dev up0
    for ((i = 0; i < n; i++)); do
        dev=$(dev_ns "$s" "$i")
        ns_add "$dev"
        ip -n "$dev" link add name eth0 type veth peer name "d$i" netns "$lan"
        ip -n "$lan" link set "d$i" master br0
        ip -n "$lan" link set "d$i" up
        ip -n "$dev" addr add "10.$s.0.$((10 + i))/24" dev eth0
        ip -n "$dev" link set eth0 up
        ip -n "$dev" route add default via "10.$s.0.1" dev eth0
    done
}

cut_uplink() { ip -n "$(gw_ns "$1")" link set up0 down; }
restore_uplink() {
    local gw; gw=$(gw_ns "$1")
    ip -n "$gw" link set up0 up
    # An interface taken down loses its routes; the connected one comes back by itself.
    ip -n "$gw" route replace default via "10.255.$1.1" dev up0
}

# "rx_bytes tx_bytes rx_packets tx_packets" of site $1's uplink, at the gateway.
uplink_counters() {
    ip netns exec "$(gw_ns "$1")" sh -c 'cd /sys/class/net/up0/statistics && echo $(cat rx_bytes tx_bytes rx_packets tx_packets)'
}

cloud_forwarded() {
    ip netns exec "$CLOUD" awk '/^Ip: [0-9]/ {print $7}' /proc/net/snmp
}

# ---------------------------------------------------------------- nodes

# Chunks a store holds and their bytes, "N BYTES": chunk files, and the records of its pack
# files (store/src/packs.rs: "LHC1", length as u32 LE, 32-byte id, the bytes), where a device
# keeps what it received. A chunk appended twice (rare) counts twice here.
store_chunks() { # data-dir
    local data=$1 n bytes f size at len
    n=$(find "$data/chunks" -type f ! -name '.*' | wc -l)
    bytes=$(find "$data/chunks" -type f ! -name '.*' -printf '%s\n' | awk '{t += $1} END {print t + 0}')
    for f in "$data"/packs/*.pack; do
        [[ -f $f ]] || continue
        size=$(stat -c %s "$f"); at=0
        while ((at + 40 <= size)); do
            [[ $(dd if="$f" iflag=skip_bytes skip="$at" bs=4 count=1 status=none) == LHC1 ]] || break
            len=$(od -An -t u4 -j $((at + 4)) -N 4 "$f" | tr -d ' ')
            ((at + 40 + len <= size)) || break
            n=$((n + 1)); bytes=$((bytes + len)); at=$((at + 40 + len))
        done
    done
    echo "$n $bytes"
}

start_node() { # ns home
    local ns=$1 home=$2
    ip netns exec "$ns" env RUST_LOG="${TESTBED_RUST_LOG:-info}" NO_COLOR=1 "$BIN" run --home "$home" </dev/null >/dev/null 2>>"$home/node.log" &
    NODE_PIDS+=("$!")
    local deadline=$(( $(now_ms) + 30000 ))
    until [[ -S "$home/control.sock" ]] && "$BIN" status --home "$home" --json >/dev/null 2>&1; do
        (( $(now_ms) > deadline )) && die "node $home did not start: $(tail -5 "$home/node.log")"
        kill -0 "${NODE_PIDS[-1]}" 2>/dev/null || die "node $home exited: $(tail -5 "$home/node.log")"
        sleep 0.05
    done
}

status_json() { "$BIN" status --home "$1" --json 2>/dev/null || echo '{}'; }

# Stop device $2 of site $1 (SIGTERM, wait) and start it again; its counters so far are kept
# as offsets so the site's totals still cover every byte it moved.
restart_device() {
    local s=$1 i=$2 k=$(($1 * 1000 + $2)) home="$WORK/s$1-d$2" st pid p
    st=$(status_json "$home")
    OFF_MI[k]=$(( ${OFF_MI[k]:-0} + $(jq '.traffic.metered_in // 0' <<<"$st") ))
    OFF_MO[k]=$(( ${OFF_MO[k]:-0} + $(jq '.traffic.metered_out // 0' <<<"$st") ))
    OFF_LI[k]=$(( ${OFF_LI[k]:-0} + $(jq '.traffic.lan_in // 0' <<<"$st") ))
    OFF_LO[k]=$(( ${OFF_LO[k]:-0} + $(jq '.traffic.lan_out // 0' <<<"$st") ))
    OFF_CS[k]=$(( ${OFF_CS[k]:-0} + $(jq '.chunks_from_seed // 0' <<<"$st") ))
    OFF_CP[k]=$(( ${OFF_CP[k]:-0} + $(jq '.chunks_from_peers // 0' <<<"$st") ))
    pid=${DEV_PID[k]}
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(( $(now_ms) + 10000 ))
    while kill -0 "$pid" 2>/dev/null; do
        (( $(now_ms) > deadline )) && { kill -KILL "$pid" 2>/dev/null || true; }
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
    local -a keep=()
    for p in "${NODE_PIDS[@]}"; do [[ "$p" == "$pid" ]] || keep+=("$p"); done
    NODE_PIDS=("${keep[@]}")
    START_MS[k]=$(now_ms)
    start_node "$(dev_ns "$s" "$i")" "$home"
    DEV_PID[k]=${NODE_PIDS[-1]}
}

# ---------------------------------------------------------------- run

cmd_run() {
    SITES=1; DEVICES=10; SIZE_MIB=16; DATA=""; NO_SHARING=0; BASELINE=0
    local -a SETS=() BASELINE_SETS=()
    IDLE_SECS=0; CUT_SITE=0; CUT_AT=40; CUT_SECS=20; RATE=20mbit; BIN="$REPO/target/release/layerhop"; TIMEOUT=300
    while (($#)); do
        case $1 in
            --sites) SITES=$2; shift 2 ;;
            --devices) DEVICES=$2; shift 2 ;;
            --size-mib) SIZE_MIB=$2; shift 2 ;;
            --data) DATA=$2; shift 2 ;;
            --no-sharing) NO_SHARING=1; shift ;;
            --baseline-site) BASELINE=1; shift ;;
            --cut-uplink) CUT_SITE=$2; shift 2 ;;
            --cut-at) CUT_AT=$2; shift 2 ;;
            --cut-secs) CUT_SECS=$2; shift 2 ;;
            --rate) RATE=$2; shift 2 ;;
            --binary) BIN=$2; shift 2 ;;
            --workdir) WORK=$2; shift 2 ;;
            --keep) KEEP=1; shift ;;
            --timeout) TIMEOUT=$2; shift 2 ;;
            --set) SETS+=("$2"); shift 2 ;;
            --idle-secs) IDLE_SECS=$2; shift 2 ;;
            --baseline-set) BASELINE_SETS+=("$2"); shift 2 ;;
            *) usage >&2; die "unknown option $1" ;;
        esac
    done
    [[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
    for c in ip tc jq; do command -v "$c" >/dev/null || die "needs $c"; done
    [[ -x "$BIN" ]] || die "no layerhop binary at $BIN (cargo build --release -p layerhop-node)"
    local total_sites=$((SITES + BASELINE))
    ((total_sites >= 1 && total_sites <= 200 && DEVICES >= 1 && DEVICES <= 200)) || die "bad --sites/--devices"
    ((CUT_SITE <= total_sites)) || die "--cut-uplink $CUT_SITE: no such site"

    trap teardown EXIT
    trap on_signal INT TERM
    cleanup_leftovers
    if [[ -z "$WORK" ]]; then
        WORK=$(mktemp -d "${TMPDIR:-/tmp}/$PREFIX-$ME.XXXXXX"); OWN_WORK=1
    else
        [[ ! -e "$WORK" || -z "$(ls -A "$WORK")" ]] || die "--workdir $WORK is not empty"
        mkdir -p "$WORK"; WORK=$(cd "$WORK" && pwd)
    fi
    # A private copy: a rebuild of target/ during the run does not change the binary under test.
    cp "$BIN" "$WORK/layerhop"; BIN="$WORK/layerhop"

    # Sites 1..SITES share (unless --no-sharing); site SITES+1 is the baseline.
    local -a SHARING=()
    local s i
    for ((s = 1; s <= total_sites; s++)); do
        if ((s > SITES || NO_SHARING)); then SHARING[s]=false; else SHARING[s]=true; fi
    done

    log "topology: cloud + $total_sites site(s) x $DEVICES devices, uplinks tbf $RATE (namespaces $P-*)"
    make_cloud
    for ((s = 1; s <= total_sites; s++)); do make_site "$s" "$DEVICES"; done
    local fwd0; fwd0=$(cloud_forwarded)

    # The seed: mDNS off, listening on the cloud address only.
    local seed="$WORK/seed"
    "$BIN" init --home "$seed" --seed --listen "/ip4/$CLOUD_IP/tcp/7410" >/dev/null
    start_node "$CLOUD" "$seed"

    # Devices: mDNS on, no addresses of peers, no peer exchange: discovery by mDNS alone.
    local -a START_MS=() FIRST_START_MS=()
    local home token k
    for ((s = 1; s <= total_sites; s++)); do
        for ((i = 0; i < DEVICES; i++)); do
            home="$WORK/s$s-d$i"
            token=$("$BIN" invite --home "$seed" --site "site-$s" --addr "/ip4/$CLOUD_IP/tcp/7410")
            "$BIN" init --home "$home" --join "$token" --listen /ip4/0.0.0.0/tcp/0 >/dev/null
            sed -i -e 's/^peer_exchange = .*/peer_exchange = false/' \
                   -e "s/^site_sharing = .*/site_sharing = ${SHARING[s]}/" \
                   -e 's/^mdns = .*/mdns = true/' "$home/config.toml"
            local kv; local -a sets=("${SETS[@]}")
            ((s > SITES)) && sets+=("${BASELINE_SETS[@]}")
            for kv in "${sets[@]}"; do
                grep -q "^${kv%%=*} = " "$home/config.toml" || die "--set $kv: no key ${kv%%=*} in the config"
                sed -i "s|^${kv%%=*} = .*|${kv%%=*} = ${kv#*=}|" "$home/config.toml"
            done
            grep -q '^peer_exchange = false$' "$home/config.toml" || die "could not set peer_exchange in $home"
            grep -q '^site_peers = \[\]$' "$home/config.toml" || die "$home lists site peers"
            START_MS[$((s * 1000 + i))]=$(now_ms); FIRST_START_MS[$((s * 1000 + i))]=${START_MS[$((s * 1000 + i))]}
            start_node "$(dev_ns "$s" "$i")" "$home"
            DEV_PID[$((s * 1000 + i))]=${NODE_PIDS[-1]}
        done
    done
    local last_start

    # Wait for every device to be connected to the seed and to see every other device of its
    # site as a site member (mDNS answers in well under a second; deadline 8 s per round).
    #
    # Workaround for a node bug (see the issue-6 report): libp2p-mdns answers its own queries
    # (multicast loop), so two devices discover each other in the same instant and dial each
    # other at once; the swarm dials from its listen port (port reuse), the two SYNs cross, TCP
    # makes one simultaneous-open connection on which both sides start noise as initiator, and
    # the handshake fails ("input error") on both. Nothing redials a peer found by mDNS, and
    # libp2p-mdns reports a peer again only after its record expires (6 min). So when a pair is
    # still missing at the deadline, one device of the pair is restarted (its mDNS query starts
    # discovery afresh); the number of such restarts is reported as mesh_heal_restarts.
    log "waiting for every device to find its site peers by mDNS"
    local -a MESH_MS=()
    local round st missing deadline j need
    local -A MEMBERS=()
    for ((round = 0; ; round++)); do
        deadline=$(( $(now_ms) + 8000 ))
        while :; do
            missing=0
            for ((s = 1; s <= total_sites; s++)); do
                for ((i = 0; i < DEVICES; i++)); do
                    k=$((s * 1000 + i))
                    st=$(status_json "$WORK/s$s-d$i")
                    PEER_ID[k]=$(jq -r '.peer_id // ""' <<<"$st")
                    MEMBERS[$k]=$(jq -r '[.peers[]? | select(.site_member) | .peer_id] | join(" ")' <<<"$st")
                    need=0; [[ ${SHARING[s]} == true ]] && need=$((DEVICES - 1))
                    if (( $(wc -w <<<"${MEMBERS[$k]}") >= need )) && jq -e 'any(.peers[]?; .seed)' >/dev/null <<<"$st"; then
                        [[ -z "${MESH_MS[k]:-}" ]] && MESH_MS[k]=$(now_ms)
                    else
                        missing=$((missing + 1))
                    fi
                done
            done
            ((missing == 0)) && break
            (( $(now_ms) > deadline )) && break
            sleep 0.2
        done
        ((missing == 0)) && break
        if ((round >= 5)); then log "warning: $missing device(s) still miss site peers; going on"; break; fi
        # Restart the higher-numbered device of every pair that is not connected.
        local -A RESTART=()
        for ((s = 1; s <= total_sites; s++)); do
            [[ ${SHARING[s]} == true ]] || continue
            for ((i = 0; i < DEVICES; i++)); do
                for ((j = i + 1; j < DEVICES; j++)); do
                    if ! grep -qw -- "${PEER_ID[$((s * 1000 + j))]}" <<<"${MEMBERS[$((s * 1000 + i))]}"; then
                        RESTART[$((s * 1000 + j))]=1
                    fi
                done
            done
        done
        for k in "${!RESTART[@]}"; do
            s=$((k / 1000)); i=$((k % 1000))
            log "site $s device $i: site peers missing after 8 s; restarting it (mDNS dial race workaround)"
            restart_device "$s" "$i"
            HEALS=$((HEALS + 1))
            unset "MESH_MS[$k]"
        done
        unset RESTART
    done
    # The last device (re)start: mesh times are measured from it.
    last_start=0
    for k in "${!START_MS[@]}"; do (( START_MS[k] > last_start )) && last_start=${START_MS[k]}; done

    # The release.
    local src
    if [[ -n "$DATA" ]]; then
        src=$(cd "$DATA" && pwd)
    else
        src="$WORK/release/models"; mkdir -p "$src"
        head -c "$((SIZE_MIB << 20))" /dev/urandom >"$src/weights.bin"
    fi
    local release_bytes; release_bytes=$(du -sb "$src" | awk '{print $1}')

    # Idle traffic: what the connected, meshed site costs its uplink while nothing is published.
    local -a IDLE=()
    if ((IDLE_SECS > 0)); then
        local -a IDLE0=()
        for ((s = 1; s <= total_sites; s++)); do IDLE0[s]=$(uplink_counters "$s"); done
        log "measuring ${IDLE_SECS}s of idle uplink traffic"
        sleep "$IDLE_SECS"
        local a b
        for ((s = 1; s <= total_sites; s++)); do
            read -r -a a <<<"${IDLE0[s]}"; read -r -a b <<<"$(uplink_counters "$s")"
            IDLE[s]=$(( (b[0] + b[1] - a[0] - a[1]) - 66 * (b[2] + b[3] - a[2] - a[3]) ))
            log "site $s idle: $(( b[0] + b[1] - a[0] - a[1] )) bytes in $(( b[2] + b[3] - a[2] - a[3] )) packets on the uplink in ${IDLE_SECS}s (${IDLE[s]} bytes of TCP payload)"
        done
    fi

    # Counters before the release.
    local -a UP0=()
    for ((s = 1; s <= total_sites; s++)); do UP0[s]=$(uplink_counters "$s"); done
    local nodes0="$WORK/nodes-before.json"
    for ((s = 1; s <= total_sites; s++)); do
        for ((i = 0; i < DEVICES; i++)); do status_json "$WORK/s$s-d$i" | jq -c --argjson s "$s" --argjson i "$i" '{site:$s, dev:$i, traffic, chunks_from_seed, chunks_from_peers}'; done
    done | jq -s . >"$nodes0"
    local seed_out0; seed_out0=$(status_json "$seed" | jq '.traffic.metered_out')

    log "publishing $(numfmt --to=iec "$release_bytes")B"
    local pub_ms version
    pub_ms=$(now_ms)
    version=$("$BIN" publish --home "$seed" --channel testbed "$src" | jq -r .version)

    # Wait for every device to complete (deadline --timeout), cutting an uplink on the way.
    local -a DONE_MS=()
    local cut_ms=0 restore_ms=0 cut_rx=0 rx0 rx
    deadline=$(( $(now_ms) + TIMEOUT * 1000 ))
    while :; do
        if ((CUT_SITE && cut_ms == 0)); then
            rx0=$(awk '{print $1}' <<<"${UP0[CUT_SITE]}")
            rx=$(uplink_counters "$CUT_SITE" | awk '{print $1}')
            if (( (rx - rx0) * 100 >= release_bytes * CUT_AT )); then
                cut_uplink "$CUT_SITE"; cut_ms=$(now_ms); cut_rx=$((rx - rx0))
                log "site $CUT_SITE: uplink down after $(numfmt --to=iec "$cut_rx")B of the release"
            fi
        fi
        if ((cut_ms && restore_ms == 0 && $(now_ms) >= cut_ms + CUT_SECS * 1000)); then
            restore_uplink "$CUT_SITE"; restore_ms=$(now_ms)
            log "site $CUT_SITE: uplink up again"
        fi
        pending=0
        for ((s = 1; s <= total_sites; s++)); do
            for ((i = 0; i < DEVICES; i++)); do
                [[ -n "${DONE_MS[$((s * 1000 + i))]:-}" ]] && continue
                if status_json "$WORK/s$s-d$i" | jq -e --argjson v "$version" 'any(.releases[]?; .channel == "testbed" and .version == $v and .complete)' >/dev/null; then
                    DONE_MS[$((s * 1000 + i))]=$(now_ms)
                else
                    pending=$((pending + 1))
                fi
            done
        done
        ((pending == 0)) && break
        if (( $(now_ms) > deadline )); then log "warning: $pending device(s) did not complete within ${TIMEOUT}s"; break; fi
        sleep 0.2
    done
    if ((cut_ms && restore_ms == 0)); then restore_uplink "$CUT_SITE"; restore_ms=$(now_ms); fi

    # Counters after.
    local fwd1; fwd1=$(cloud_forwarded)
    local seed_out1; seed_out1=$(status_json "$seed" | jq '.traffic.metered_out')
    local release_file="$seed/data/releases/testbed/$(printf '%020d' "$version").release"
    local release_file_bytes; release_file_bytes=$(stat -c %s "$release_file")

    local sites_json="$WORK/sites.json"
    : >"$sites_json"
    local up1 devs_json st logc first_found complete_home chunks chunk_bytes mesh conv
    for ((s = 1; s <= total_sites; s++)); do
        up1=$(uplink_counters "$s")
        devs_json="$WORK/site$s-devices.json"
        : >"$devs_json"
        complete_home=""
        for ((i = 0; i < DEVICES; i++)); do
            home="$WORK/s$s-d$i"
            st=$(status_json "$home")
            logc=$(grep -c 'found by mDNS' "$home/node.log" || true)
            first_found=$(grep -m1 'found by mDNS' "$home/node.log" | grep -oE '[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z' | head -1 || true)
            [[ -n "$first_found" ]] && first_found=$(date -d "$first_found" +%s%3N)
            k=$((s * 1000 + i))
            mesh=${MESH_MS[k]:-}; conv=${DONE_MS[k]:-}
            [[ -n "$conv" && -z "$complete_home" ]] && complete_home=$home
            jq -c --argjson s "$s" --argjson i "$i" --arg home "$home" --argjson logc "$logc" \
                --arg start "${FIRST_START_MS[k]}" --arg found "$first_found" --arg mesh "$mesh" --arg conv "$conv" --arg last "$last_start" --arg pub "$pub_ms" \
                --slurpfile before "$nodes0" \
                --argjson omi "${OFF_MI[k]:-0}" --argjson omo "${OFF_MO[k]:-0}" --argjson oli "${OFF_LI[k]:-0}" \
                --argjson olo "${OFF_LO[k]:-0}" --argjson ocs "${OFF_CS[k]:-0}" --argjson ocp "${OFF_CP[k]:-0}" '
                ($before[0][] | select(.site == $s and .dev == $i)) as $b |
                {dev: $i, home: $home, peer_id,
                 metered_in: (.traffic.metered_in + $omi), metered_out: (.traffic.metered_out + $omo),
                 lan_in: (.traffic.lan_in + $oli), lan_out: (.traffic.lan_out + $olo),
                 release_metered_in: (.traffic.metered_in - $b.traffic.metered_in),
                 release_metered_out: (.traffic.metered_out - $b.traffic.metered_out),
                 chunks_from_seed: (.chunks_from_seed + $ocs), chunks_from_peers: (.chunks_from_peers + $ocp),
                 restarted: ($omi + $omo > 0),
                 release_chunks_from_seed: (.chunks_from_seed - $b.chunks_from_seed),
                 site_members: [.peers[]? | select(.site_member)] | length,
                 lan_peers: [.peers[]? | select(.link == "lan") | .peer_id],
                 seed_connected: any(.peers[]?; .seed),
                 mdns_found_lines: $logc,
                 mdns_first_found_secs: (if $found == "" then null else (($found | tonumber) - ($start | tonumber)) / 1000 end),
                 mesh_secs_after_start: (if $mesh == "" then null else (($mesh | tonumber) - ($start | tonumber)) / 1000 end),
                 mesh_secs_after_last_start: (if $mesh == "" then null else ([0, ($mesh | tonumber) - ($last | tonumber)] | max) / 1000 end),
                 converge_secs: (if $conv == "" then null else (($conv | tonumber) - ($pub | tonumber)) / 1000 end),
                 complete: ($conv != "")}' <<<"$st" >>"$devs_json"
        done
        chunks=0; chunk_bytes=0
        if [[ -n "$complete_home" ]]; then
            read -r chunks chunk_bytes < <(store_chunks "$complete_home/data")
        fi
        jq -n -c --argjson s "$s" --argjson sharing "${SHARING[s]}" --argjson n "$DEVICES" \
            --arg up0 "${UP0[s]}" --arg up1 "$up1" --argjson chunks "$chunks" --argjson chunk_bytes "$chunk_bytes" \
            --argjson relf "$release_file_bytes" --arg ch "$complete_home" \
            --argjson cut "$([[ $CUT_SITE == "$s" ]] && ((cut_ms)) && echo true || echo false)" \
            --argjson cut_ms "$cut_ms" --argjson restore_ms "$restore_ms" --argjson pub_ms "$pub_ms" --argjson cut_rx "$cut_rx" \
            --slurpfile devs "$devs_json" '
            ($up0 | split(" ") | map(tonumber)) as $a | ($up1 | split(" ") | map(tonumber)) as $b |
            {site: "site-\($s)", index: $s, sharing: $sharing, devices: $n,
             uplink: {rx_bytes: $b[0], tx_bytes: $b[1], rx_packets: $b[2], tx_packets: $b[3]},
             uplink_release: {rx_bytes: ($b[0] - $a[0]), tx_bytes: ($b[1] - $a[1]), rx_packets: ($b[2] - $a[2]), tx_packets: ($b[3] - $a[3])},
             nodes: {metered_in: ([$devs[].metered_in] | add), metered_out: ([$devs[].metered_out] | add),
                     lan_in: ([$devs[].lan_in] | add), lan_out: ([$devs[].lan_out] | add),
                     chunks_from_seed: ([$devs[].chunks_from_seed] | add), chunks_from_peers: ([$devs[].chunks_from_peers] | add)},
             nodes_release: {metered_in: ([$devs[].release_metered_in] | add), metered_out: ([$devs[].release_metered_out] | add),
                             chunks_from_seed: ([$devs[].release_chunks_from_seed] | add)},
             distinct_chunks: $chunks, chunk_file_bytes: $chunk_bytes, release_file_bytes: $relf,
             new_bytes_raw: ($chunk_bytes + $relf), complete_home: $ch,
             all_complete: all($devs[]; .complete),
             min_site_members: ([$devs[].site_members] | min),
             mdns_found_lines: ([$devs[].mdns_found_lines] | add),
             mdns_first_found_secs: [$devs[].mdns_first_found_secs | select(. != null)],
             mesh_secs_after_last_start: ([$devs[].mesh_secs_after_last_start] | if any(. == null) then null else max end),
             converge_secs: ([$devs[].converge_secs] | if any(. == null) then null else max end),
             cut: (if $cut then {down_after_rx_bytes: $cut_rx, down_at_secs: (($cut_ms - $pub_ms) / 1000),
                                 down_secs: (($restore_ms - $cut_ms) / 1000)} else null end),
             device_list: $devs}' >>"$sites_json"
    done

    # Peers of other sites (by peer id) seen by any device.
    local result
    result=$(jq -s -c --argjson fwd "$((fwd1 - fwd0))" --argjson seed_out "$((seed_out1 - seed_out0))" \
        --argjson release_bytes "$release_bytes" --arg work "$WORK" --argjson heals "$HEALS" --argjson version "$version" --arg rate "$RATE" '
        (map({key: .site, value: [.device_list[].peer_id]}) | from_entries) as $ids |
        {work: $work, version: $version, mesh_heal_restarts: $heals, rate: $rate, release_source_bytes: $release_bytes,
         cloud_forwarded_packets: $fwd, seed_release_metered_out: $seed_out,
         sites: map(. as $site | .foreign_peers = ([.device_list[].lan_peers[] as $p | $ids | to_entries[]
                     | select(.key != $site.site and any(.value[]; . == $p)) | $p] | length))}' "$sites_json")

    print_table "$result"
    echo "RESULT $result"
}

# Align tab-separated columns (without util-linux `column`).
align() {
    awk -F'\t' '{ for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > w[i]) w[i] = length($i) } if (NF > nf) nf = NF }
        END { for (r = 1; r <= NR; r++) { line = ""; for (i = 1; i <= nf; i++) line = line sprintf("%-" (w[i] + 2) "s", cell[r, i]); sub(/ +$/, "", line); print line } }'
}

print_table() {
    local r=$1
    echo
    echo "layerhop testbed: release of $(jq -r '.release_source_bytes' <<<"$r") bytes, uplinks tbf $(jq -r .rate <<<"$r") each way"
    echo "kernel: /sys/class/net/up0/statistics at each site's gateway, since the topology was made (joins included)"
    echo "  rx/tx = Ethernet frames (one per wire packet); IP = rx+tx - 14 B/packet (what a cellular"
    echo "  operator bills); payload = rx+tx - 66 B/packet (14 Ethernet + 20 IPv4 + 32 TCP w/ timestamps)"
    echo "nodes = devices' metered_in + metered_out (status --json); new = one device's chunk files + release file"
    echo
    jq -r '
        def mib: . / 1048576 | . * 100 | round / 100 | tostring;
        def r3: . * 1000 | round / 1000 | tostring;
        (["site", "sharing", "dev", "new MiB", "rx MiB", "tx MiB", "IP MiB", "payload MiB", "nodes MiB",
          "IP/new", "payload/new", "nodes/payload", "seed chunks", "distinct", "members", "mesh s", "converge s", "foreign"] | @tsv),
        (.sites[] |
          (.uplink.rx_bytes + .uplink.tx_bytes) as $raw | (.uplink.rx_packets + .uplink.tx_packets) as $pk |
          ($raw - 14 * $pk) as $ip | ($raw - 66 * $pk) as $pay |
          (.nodes.metered_in + .nodes.metered_out) as $nodes |
          [.site, (.sharing | tostring), .devices, (.new_bytes_raw | mib), (.uplink.rx_bytes | mib), (.uplink.tx_bytes | mib),
           ($ip | mib), ($pay | mib), ($nodes | mib), ($ip / .new_bytes_raw | r3), ($pay / .new_bytes_raw | r3), ($nodes / $pay | r3),
           .nodes.chunks_from_seed, .distinct_chunks, .min_site_members, (.mesh_secs_after_last_start // "-" | tostring),
           (.converge_secs // "-" | tostring), .foreign_peers] | @tsv)' <<<"$r" | align
    echo
    jq -r '.sites[] | "\(.site): mDNS first discovery \(.mdns_first_found_secs | if length == 0 then "none" else "\(min)-\(max) s" end) after each device started, \(.mdns_found_lines) \"found by mDNS\" dials, every device sees \(.min_site_members) site members; \(.nodes.lan_in) LAN bytes in"' <<<"$r"
    jq -r '.sites[] | select(.cut != null) | "cut: \(.site) uplink down \(.cut.down_secs) s, \(.cut.down_at_secs) s after publish (after \(.cut.down_after_rx_bytes) bytes); all complete: \(.all_complete); seed chunks \(.nodes.chunks_from_seed) of \(.distinct_chunks) distinct"' <<<"$r"
    jq -r 'select(.mesh_heal_restarts > 0) | "mDNS dial race: \(.mesh_heal_restarts) device restart(s) were needed to complete the site meshes (node bug, see the issue-6 report)"' <<<"$r"
    jq -r '"cloud forwarded \(.cloud_forwarded_packets) packets between sites; seed sent \(.seed_release_metered_out) bytes for the release"' <<<"$r"
    echo
}

case "${1:-help}" in
    run) shift; cmd_run "$@" ;;
    cleanup)
        [[ $(id -u) == 0 ]] || die "needs root"
        cleanup_leftovers ;;
    help | -h | --help) usage ;;
    *) usage >&2; exit 2 ;;
esac
