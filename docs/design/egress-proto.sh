#!/usr/bin/env bash
# faas opt-in egress prototype: CNI bridge + host-local + loopback, nftables policy.
# Sets up, verifies isolation, measures, tears down. Exits nonzero if any check fails.
# Debian 12, root. Needs: containernetworking-plugins nftables iproute2 curl python3 (iptables only for the docker check).
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/faas-egress-proto.XXXXXX")
echo "work files in $WORK"
HELPER="python3 $HERE/egress-helper.py"

NET=faas-egress                 # CNI network name (host-local state dir name)
BR=faas0
SUBNET=10.231.0.0/16
GW=10.231.0.1
CNI_PATH=/usr/lib/cni
IPAM_DIR=/run/faas/cni-ipam     # host-local dataDir (tmpfs: state dies with the netns on reboot)
OUT_NS=faas-egress-out          # "the internet": 198.51.100.1 (+172.31.255.0/24 as a private net, 169.254.169.254 as metadata)
TEST_DNS=172.31.255.53          # fake resolver inside OUT_NS (we never query the real one from tests)
ITER=${ITER:-20}
UPLINK=$(ip -4 route show default | awk '{for(i=1;i<NF;i++) if($i=="dev") {print $(i+1); exit}}')
MTU=$(cat /sys/class/net/${UPLINK:-lo}/mtu 2>/dev/null || echo 1500)   # calls must not exceed the uplink MTU (1400 here)

PASS=0; FAIL=0; PIDS=()
ok()   { echo "PASS  $*"; PASS=$((PASS+1)); }
bad()  { echo "FAIL  $*"; FAIL=$((FAIL+1)); }
info() { echo "----  $*"; }

ORIG_FWD=$(sysctl -n net.ipv4.ip_forward)
ORIG_BRNF=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo none)
ORIG_RPF=$(sysctl -n net.ipv4.conf.all.rp_filter)
HAD_IP_FILTER=0; nft list table ip filter >/dev/null 2>&1 && HAD_IP_FILTER=1

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for ns in $(ip netns list | awk '/^faas-egress/{print $1}'); do ip netns pids "$ns" | xargs -r kill 2>/dev/null; done
  for f in "$WORK"/*.res; do [ -e "$f" ] || continue
    id=$(basename "$f" .res); ns=$(cat "$WORK/$id.ns")
    cni DEL bridge "$id" "$ns" >/dev/null 2>&1; cni DEL loopback "$id" "$ns" >/dev/null 2>&1; done
  for ns in $(ip netns list | awk '/^faas-egress/{print $1}'); do ip netns del "$ns"; rm -rf "/etc/netns/$ns"; done
  ip link del feo-h 2>/dev/null; ip link del "$BR" 2>/dev/null
  nft delete table inet faas 2>/dev/null; nft delete table bridge faas 2>/dev/null
  if [ "$HAD_IP_FILTER" = 0 ] && nft list table ip filter >/dev/null 2>&1; then nft delete table ip filter; fi
  ip route del 172.31.255.0/24 2>/dev/null; ip route del 169.254.169.254/32 2>/dev/null
  rm -rf "$IPAM_DIR"; rmdir /run/faas /etc/netns 2>/dev/null
  sysctl -qw net.ipv4.ip_forward="$ORIG_FWD" net.ipv4.conf.all.rp_filter="$ORIG_RPF"
  [ "$ORIG_BRNF" != none ] && echo "$ORIG_BRNF" > /proc/sys/net/bridge/bridge-nf-call-iptables
}
trap cleanup EXIT

# ---------------------------------------------------------------- CNI plumbing
bridge_conf() { cat <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$NET",
  "type": "bridge",
  "bridge": "$BR",
  "isGateway": true,
  "ipMasq": false,
  "hairpinMode": false,
  "mtu": $MTU,
  "ipam": {
    "type": "host-local",
    "ranges": [[{"subnet": "$SUBNET", "gateway": "$GW"}]],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dataDir": "$IPAM_DIR"
  }
}
EOF
}
lo_conf() { echo '{"cniVersion":"1.0.0","name":"faas-lo","type":"loopback"}'; }
# cni CMD PLUGIN CONTAINERID NETNS   (config on stdin, result JSON on stdout)
cni() {
  local conf; if [ "$2" = bridge ]; then conf=$(bridge_conf); else conf=$(lo_conf); fi
  CNI_COMMAND=$1 CNI_CONTAINERID=$3 CNI_NETNS=/var/run/netns/$(nsname "$4") CNI_IFNAME=eth0 CNI_PATH=$CNI_PATH \
    "$CNI_PATH/$2" <<<"$conf"
}

declare -A IP MAC VETH ELEMS
nsname() { [ "$1" = A ] && echo faas-egress-test || echo "faas-egress-$1"; }   # call A uses the brief's netns name
nsx() { local n=$1; shift; ip netns exec "$(nsname "$n")" "$@"; }
# call_up NAME  -> netns + veth on faas0; records IP/MAC/host veth from the CNI result
call_up() {
  local n=$1 id="faas-$1"
  ip netns add "$(nsname "$n")" || return 1
  cni ADD bridge "$id" "$n" > "$WORK/$id.res" || { cat "$WORK/$id.res"; return 1; }
  echo "$n" > "$WORK/$id.ns"
  cni ADD loopback "$id" "$n" >/dev/null || return 1
  IP[$n]=$(jq -r '.ips[0].address|split("/")[0]' "$WORK/$id.res")
  MAC[$n]=$(jq -r '.interfaces[]|select(.sandbox!=null)|.mac' "$WORK/$id.res")
  VETH[$n]=$(jq -r --arg br "$BR" '.interfaces[]|select(.sandbox==null and .name!=$br)|.name' "$WORK/$id.res")
  mkdir -p "/etc/netns/$(nsname "$n")"; echo "nameserver $TEST_DNS" > "/etc/netns/$(nsname "$n")/resolv.conf"   # ip-netns-exec bind-mounts this
}
# call_policy NAME [ALLOW...]  (ALLOW = CIDR:PORT[-PORT]; none = open egress to public addresses)
call_policy() {
  local n=$1; shift; local e
  e="add element bridge faas call_ifs { \"${VETH[$n]}\" }
add element bridge faas call_ports { \"${VETH[$n]}\" . ${MAC[$n]} . ${IP[$n]} }"
  if [ $# -eq 0 ]; then e+=$'\n'"add element inet faas open_calls { ${IP[$n]} }"
  else for a in "$@"; do e+=$'\n'"add element inet faas allow { ${IP[$n]} . ${a%:*} . ${a##*:} }"; done; fi
  ELEMS[$n]=$e
  nft -f - <<<"$e" || return 1
  bridge link set dev "${VETH[$n]}" isolated on
}
call_down() {
  local n=$1 id="faas-$1"
  ip netns pids "$(nsname "$n")" | xargs -r kill 2>/dev/null      # (the container is gone first)
  [ -n "${ELEMS[$n]:-}" ] && nft -f - <<<"${ELEMS[$n]//add element/delete element}"
  cni DEL bridge "$id" "$n" && cni DEL loopback "$id" "$n" && rm -f "$WORK/$id.res" "$WORK/$id.ns"
  ip netns del "$(nsname "$n")"; rm -rf "/etc/netns/$(nsname "$n")"
}

# ---------------------------------------------------------------- nftables policy
host_resolvers() {  # upstream IPv4 resolvers the calls should use
  local f=/etc/resolv.conf
  if awk '/^nameserver/{print $2}' $f | grep -qE '^(127\.|::1)'; then
    f=/run/systemd/resolve/resolv.conf; [ -r $f ] || { echo "PROXY-NEEDED"; return; }
  fi
  awk '/^nameserver/ && $2 !~ /:/ {print $2}' $f
}
lan_subnets() {  # connected IPv4 subnets of the default-route interface(s)
  for d in $(ip -4 route show default | awk '{for(i=1;i<NF;i++) if($i=="dev") print $(i+1)}' | sort -u); do
    ip -4 route show dev "$d" scope link proto kernel | awk '{print $1}'; done
}
ruleset() {
  local dns lan
  dns=$( { host_resolvers | grep -v PROXY; echo "$TEST_DNS"; } | paste -sd, | sed 's/,/, /g')
  lan=$(lan_subnets | paste -sd, | sed 's/,/, /g')
  cat <<EOF
add table inet faas
delete table inet faas
table inet faas {
  # never reachable from a call, whatever its allowlist (host addresses are also caught by input)
  set always_deny { type ipv4_addr; flags interval; auto-merge;
    elements = { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/4, 240.0.0.0/4, $SUBNET }; }
  # not reachable for calls without allowlist (private/special ranges + the node's LAN)
  set nonpublic { type ipv4_addr; flags interval; auto-merge;
    elements = { 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, 192.0.0.0/24, 198.18.0.0/15${lan:+, $lan} }; }
  set dns { type ipv4_addr; flags interval; auto-merge; elements = { $dns }; }
  set open_calls { type ipv4_addr; }                                        # per call: IP
  set allow { type ipv4_addr . ipv4_addr . inet_service; flags interval; }  # per call: IP . CIDR . port(-range)

  chain input {
    type filter hook input priority filter; policy accept;
    iifname "$BR" jump call_to_host
  }
  chain call_to_host {
    ct state established,related accept   # replies to connections the host opened
    counter reject with icmpx admin-prohibited
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    oifname "$BR" jump to_calls
    iifname "$BR" jump from_calls
  }
  chain to_calls {
    iifname "$BR" counter drop            # call -> call (only visible here when br_netfilter is active)
    ct state established,related accept
    counter drop                          # nothing unsolicited into calls (LAN, docker, ...)
  }
  chain from_calls {
    meta nfproto ipv6 counter drop
    ip saddr != $SUBNET counter drop
    ip daddr @always_deny counter reject with icmpx admin-prohibited
    ip daddr @dns meta l4proto { udp, tcp } th dport 53 accept
    ip saddr @open_calls ip daddr @nonpublic counter reject with icmpx admin-prohibited
    ip saddr @open_calls accept
    meta l4proto { tcp, udp } ip saddr . ip daddr . th dport @allow accept
    counter reject with icmpx admin-prohibited
  }
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr $SUBNET oifname != "$BR" masquerade
  }
}
add table bridge faas
delete table bridge faas
table bridge faas {
  set call_ifs { type ifname; }                                   # per call: host veth
  set call_ports { type ifname . ether_addr . ipv4_addr; }        # per call: host veth . call MAC . call IP
  chain prerouting {                                              # anti-spoofing (runs before FDB learning)
    type filter hook prerouting priority filter; policy accept;
    iifname != @call_ifs accept
    ether type ip iifname . ether saddr . ip saddr @call_ports accept
    ether type arp iifname . ether saddr . arp saddr ip @call_ports iifname . arp saddr ether . arp saddr ip @call_ports accept
    counter drop                                                  # spoofed, IPv6, anything else
  }
  chain forward {                                                 # port -> port = call -> call, with or without br_netfilter
    type filter hook forward priority filter; policy accept;
    iifname @call_ifs counter drop
  }
}
EOF
}

# ---------------------------------------------------------------- test helpers
# reach NS URL [curl args] -> 0 if an HTTP answer came back
reach() { local ns=$1; shift; if [ "$ns" = host ]; then timeout 4 curl -s -m 2 -o /dev/null "$@"; else nsx "$ns" timeout 4 curl -s -m 2 -o /dev/null "$@"; fi; }
want_ok()   { local d=$1; shift; if reach "$@"; then ok "$d"; else bad "$d (expected reachable)"; fi; }
want_fail() { local d=$1; shift; if reach "$@"; then bad "$d (expected UNREACHABLE)"; else ok "$d"; fi; }
bg() { "$@" & PIDS+=($!); }
p50() { sort -n | awk '{a[NR]=$1} END{printf "%.1f", (NR%2? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
now() { date +%s%N; }

# ================================================================= 0. host + "internet"
info "packages: $(dpkg-query -W -f='${Package} ${Version}; ' containernetworking-plugins nftables)"
info "host /etc/resolv.conf nameservers: $(awk '/^nameserver/{print $2}' /etc/resolv.conf | paste -sd' ') -> calls would use: $(host_resolvers | paste -sd' ')"
ip netns add $OUT_NS
ip link add feo-h type veth peer name feo-n netns $OUT_NS
ip addr add 198.51.100.254/24 dev feo-h; ip link set feo-h up
ip -n $OUT_NS addr add 198.51.100.1/24 dev feo-n; ip -n $OUT_NS link set feo-n up; ip -n $OUT_NS link set lo up
for a in 172.31.255.1 $TEST_DNS 169.254.169.254; do ip -n $OUT_NS addr add $a/32 dev lo; done
ip route add 172.31.255.0/24 via 198.51.100.1; ip route add 169.254.169.254/32 via 198.51.100.1
# (no default route in OUT_NS: un-NATed call traffic cannot come back)
bg ip netns exec $OUT_NS $HELPER tcp 0.0.0.0 8080 8081 80
bg ip netns exec $OUT_NS $HELPER udplog 0.0.0.0 8080 "$WORK/udp.log"
bg ip netns exec $OUT_NS $HELPER dns $TEST_DNS 198.51.100.1
# host services: loopback-only, and everything (v4+v6) on 18081
bg $HELPER tcp 127.0.0.1 18080
bg $HELPER tcp :: 18081
HOSTIP=$(ip -4 route get 1.1.1.1 | awk '{for(i=1;i<NF;i++) if($i=="src") print $(i+1)}')

# ================================================================= 1. calls (before policy)
call_up A || { bad "CNI ADD A"; exit 1; }
call_up B || { bad "CNI ADD B"; exit 1; }
call_up C || { bad "CNI ADD C"; exit 1; }
for n in A B C; do info "call $n: ip=${IP[$n]} mac=${MAC[$n]} host-veth=${VETH[$n]}"; done
cp "$WORK/faas-A.res" "$WORK/example-cni-result.json"
bg nsx B $HELPER tcp 0.0.0.0 9000
info "ip_forward after bridge ADD (isGateway sets it): $(sysctl -n net.ipv4.ip_forward)"
for i in $(seq 50); do ip -6 addr show dev $BR | grep -q tentative || break; sleep 0.1; done
GW6=$(ip -6 -o addr show dev $BR scope link | awk '{print $4}' | cut -d/ -f1)
sleep 0.5

info "positive controls from the host (every target below really listens)"
want_ok "host -> outside 198.51.100.1:8080"  host http://198.51.100.1:8080/
want_ok "host -> private 172.31.255.1:8080"  host http://172.31.255.1:8080/
want_ok "host -> metadata 169.254.169.254:80" host http://169.254.169.254/
want_ok "host -> own 127.0.0.1:18080"        host http://127.0.0.1:18080/
want_ok "host -> call B 9000"                host http://${IP[B]}:9000/
info "negative controls: without our policy the isolation does NOT exist"
echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables   # as on a stock kernel without br_netfilter loaded
reach A http://$GW:18081/ && ok "control: call A reaches host service via gateway IP (so the input rule is needed)" || bad "control: A -> gateway:18081"
reach A -g "http://[$GW6%eth0]:18081/" && ok "control: call A reaches host service via IPv6 link-local" || info "control: A -> [gw v6 LL] not reachable anyway"
reach A http://${IP[B]}:9000/ && ok "control: call A reaches call B (so L2 isolation is needed)" || bad "control: A -> B"
reach A http://198.51.100.1:8080/ && info "control: outside reachable without NAT?!" || ok "control: no NAT -> outside unreachable (masquerade is needed)"
echo "$ORIG_BRNF" > /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null

# ================================================================= 2. policy
ruleset > "$WORK/ruleset.nft"
nft -f "$WORK/ruleset.nft" || { bad "nft ruleset load"; exit 1; }
call_policy A                                   || bad "policy A"
call_policy B 198.51.100.1/32:8080              || bad "policy B"
call_policy C 198.51.100.1/32:8081              || bad "policy C"
printf '%s\n' "${ELEMS[A]}" "${ELEMS[B]}" "${ELEMS[C]}" > "$WORK/elements.nft"

check_all() {
  info "(a) open call A: public ok, private/LAN denied"
  want_ok   "A -> 198.51.100.1:8080"        A http://198.51.100.1:8080/
  want_ok   "A -> 198.51.100.1:8081"        A http://198.51.100.1:8081/
  want_fail "A -> private 172.31.255.1:8080" A http://172.31.255.1:8080/
  info "(b) allowlisted call B (198.51.100.1:8080) / C (198.51.100.1:8081)"
  want_ok   "B -> 198.51.100.1:8080"        B http://198.51.100.1:8080/
  want_fail "B -> 198.51.100.1:8081"        B http://198.51.100.1:8081/
  want_fail "B -> 198.51.100.1:80"          B http://198.51.100.1:80/
  want_ok   "C -> 198.51.100.1:8081"        C http://198.51.100.1:8081/
  want_fail "C -> 198.51.100.1:8080"        C http://198.51.100.1:8080/
  info "(c) host + metadata unreachable from every call"
  for n in A B; do
    want_fail "$n -> gateway $GW:18081"        $n http://$GW:18081/
    want_fail "$n -> host primary $HOSTIP:18081" $n http://$HOSTIP:18081/
    want_fail "$n -> host 198.51.100.254:18081" $n http://198.51.100.254:18081/
    want_fail "$n -> host [v6 link-local]:18081" $n -g "http://[$GW6%eth0]:18081/"
    want_fail "$n -> 127.0.0.1:18080 (own lo)"  $n http://127.0.0.1:18080/
    want_fail "$n -> metadata 169.254.169.254"  $n http://169.254.169.254/
    want_fail "$n -> resolver host, non-DNS port" $n http://$TEST_DNS:8080/
  done
  info "(d) call -> call"
  want_fail "A -> B:9000"                   A http://${IP[B]}:9000/
  want_fail "C -> B:9000"                   C http://${IP[B]}:9000/
  info "(e) DNS via resolv.conf -> resolver allowed on :53 only"
  for n in A B; do
    r=$(nsx $n timeout 5 getent ahostsv4 api.example.test | awk 'NR==1{print $1}')
    [ "$r" = 198.51.100.1 ] && ok "$n resolves api.example.test via $TEST_DNS" || bad "$n DNS (got '$r')"
  done
}
check_all

info "(c') route 127.0.0.0/8 of call A to the gateway (martian on the host)"
nsx A ip route del local 127.0.0.0/8 dev lo table local
nsx A ip route add 127.0.0.1/32 via $GW
want_fail "A -> host 127.0.0.1:18080 via gateway" A http://127.0.0.1:18080/
nsx A ip route del 127.0.0.1/32; nsx A ip route add local 127.0.0.0/8 dev lo table local

info "(d') each call->call mechanism alone"
BRFWD='add rule bridge faas forward iifname @call_ifs counter drop'
iso() { for n in A B C; do bridge link set dev "${VETH[$n]}" isolated "$1"; done; }
brnf() { [ "$ORIG_BRNF" != none ] && echo "$1" > /proc/sys/net/bridge/bridge-nf-call-iptables; }
iso off; brnf 0; want_fail "A -> B, only nft bridge-family forward drop" A http://${IP[B]}:9000/
nft flush chain bridge faas forward
iso on;  brnf 0; want_fail "A -> B, only port isolation"               A http://${IP[B]}:9000/
if [ "$ORIG_BRNF" != none ]; then
  iso off; brnf 1; want_fail "A -> B, only inet forward (br_netfilter)" A http://${IP[B]}:9000/
fi
iso on; brnf "$ORIG_BRNF"; nft "$BRFWD"

info "(f) spoofing: C takes B's IP to use B's allowlist (udp 198.51.100.1:8080)"
: > "$WORK/udp.log"
nsx B $HELPER udpsend "${IP[B]}" 198.51.100.1 8080 legit-B
nsx C ip addr add "${IP[B]}/32" dev eth0
nsx C $HELPER udpsend "${IP[B]}" 198.51.100.1 8080 spoof-C; sleep 0.5
grep -q legit-B "$WORK/udp.log" && ok "B's own udp to its allowlisted dest arrives" || bad "legit udp from B missing"
grep -q spoof-C "$WORK/udp.log" && bad "C spoofing B's IP got through" || ok "C spoofing B's IP is dropped (bridge prerouting)"
nsx C ip neigh flush all
nsx C timeout 3 curl -s -m 1 --interface "${IP[B]}" http://$GW:1/ >/dev/null   # ARP who-has GW, sender = B's IP
ip neigh show "${IP[B]}" dev $BR | grep -qi "${MAC[C]}" && bad "host ARP cache poisoned: ${IP[B]} -> C's MAC" || ok "ARP spoof from C does not poison host neighbour entry of B"
nft flush chain bridge faas prerouting          # control: without anti-spoofing it works
sleep 3; nsx C ip neigh flush all                # let C's failed ARP probes for the gateway run out
nsx C $HELPER udpsend "${IP[B]}" 198.51.100.1 8080 spoof2-C
for i in $(seq 30); do grep -q spoof2-C "$WORK/udp.log" && break; sleep 0.1; done
grep -q spoof2-C "$WORK/udp.log" && ok "control: without the bridge prerouting chain the spoof passes" || bad "control: spoof did not pass even without anti-spoof chain"
ip neigh show "${IP[B]}" dev $BR | grep -qi "${MAC[C]}" && ok "control: ... and the host's ARP entry for B now points to C (poisoned)" || info "control: host neighbour of B not poisoned: $(ip neigh show "${IP[B]}" dev $BR)"
nft -f - <<EOF
add rule bridge faas prerouting iifname != @call_ifs accept
add rule bridge faas prerouting ether type ip iifname . ether saddr . ip saddr @call_ports accept
add rule bridge faas prerouting ether type arp iifname . ether saddr . arp saddr ip @call_ports iifname . arp saddr ether . arp saddr ip @call_ports accept
add rule bridge faas prerouting counter drop
EOF
nsx C ip addr del "${IP[B]}/32" dev eth0; ip neigh flush dev $BR

info "(g) strict rp_filter=1 does not break egress"
sysctl -qw net.ipv4.conf.all.rp_filter=1
want_ok "A -> 198.51.100.1:8080 with rp_filter=1" A http://198.51.100.1:8080/
want_ok "B -> 198.51.100.1:8080 with rp_filter=1" B http://198.51.100.1:8080/
sysctl -qw net.ipv4.conf.all.rp_filter="$ORIG_RPF"

info "(h) docker-style iptables FORWARD policy DROP (what dockerd installs)"
iptables -N DOCKER-USER 2>/dev/null; iptables -A FORWARD -j DOCKER-USER; iptables -P FORWARD DROP
want_fail "with docker's FORWARD DROP, A -> outside breaks" A http://198.51.100.1:8080/
iptables -I DOCKER-USER -i $BR -j ACCEPT; iptables -I DOCKER-USER -o $BR -j ACCEPT
want_ok   "with DOCKER-USER accepts for $BR, A -> outside" A http://198.51.100.1:8080/
want_fail "  ... and B is still held to its allowlist"     B http://198.51.100.1:8081/
want_fail "  ... and A -> B still blocked"                 A http://${IP[B]}:9000/
iptables -P FORWARD ACCEPT; iptables -F FORWARD; iptables -F DOCKER-USER; iptables -X DOCKER-USER
[ "$HAD_IP_FILTER" = 0 ] && nft delete table ip filter

info "(i) an OCI container (what containerd hands to runc/crun) joins call A's prepared netns"
echo "nameserver $TEST_DNS" > "$WORK/resolv.conf"
for rt in crun runc; do
  command -v $rt >/dev/null || continue
  mkdir -p "$WORK/bundle-$rt/rootfs"; ( cd "$WORK/bundle-$rt" && rm -f config.json && $rt spec )
  ( cd "$WORK/bundle-$rt/rootfs" && mkdir -p usr etc proc dev sys tmp && for l in bin lib lib64 sbin; do ln -sfn usr/$l $l; done )
  jq --arg ns "/var/run/netns/$(nsname A)" --arg rc "$WORK/resolv.conf" '
    .root = {path: "rootfs", readonly: true} | .process.terminal = false | .hostname = "call"
    | .mounts |= map(select(.destination != "/sys/fs/cgroup"))
    | .mounts += [{destination: "/usr", type: "bind", source: "/usr", options: ["rbind","ro"]},
                  {destination: "/etc", type: "bind", source: "/etc", options: ["rbind","ro"]}]
    | .process.args = ["sh","-c","curl -s -m 2 http://198.51.100.1:8080/; curl -s -m 2 http://10.231.0.1:18081/ || echo host-blocked; getent ahostsv4 api.example.test | head -1; ip -4 -o addr show eth0"]
    | .linux.namespaces |= map(if .type == "network" then . + {path: $ns} else . end)
    | .mounts += [{destination: "/etc/resolv.conf", type: "bind", source: $rc, options: ["rbind","ro"]}]
  ' "$WORK/bundle-$rt/config.json" > "$WORK/bundle-$rt/c.json" && mv "$WORK/bundle-$rt/c.json" "$WORK/bundle-$rt/config.json"
  out=$(cd "$WORK/bundle-$rt" && timeout 20 $rt run faas-egress-oci-$rt 2>&1); $rt delete -f faas-egress-oci-$rt >/dev/null 2>&1
  echo "$out" | sed 's/^/        /'
  if echo "$out" | grep -q "ok 8080" && echo "$out" | grep -q host-blocked && echo "$out" | grep -q "^198.51.100.1 " && echo "$out" | grep -q "${IP[A]}/"; then
    ok "$rt container in prepared netns: egress ok, host blocked, DNS ok"; else bad "$rt container in prepared netns"; fi
done
jq -c '.linux.namespaces' "$WORK/bundle-crun/config.json" 2>/dev/null | sed 's/^/        namespaces: /'

nft list ruleset > "$WORK/ruleset-with-elements.txt"

# ================================================================= 3. DEL + leak check
info "CNI DEL"
for n in A B C; do call_down $n || bad "DEL $n"; done
ip link show feo-h >/dev/null  # keep outside
leaks=0
[ -z "$(ip -o link show master $BR)" ] || { bad "veths left on $BR"; leaks=1; }
[ -z "$(ls "$IPAM_DIR/$NET" | grep -vE '^(lock|last_reserved_ip\.0)$')" ] || { bad "host-local IPs left: $(ls $IPAM_DIR/$NET)"; leaks=1; }
[ -z "$(ip netns list | grep -E '^faas-egress-(test|b|c|B|C)( |$)')" ] || { bad "netns left"; leaks=1; }
for s in "inet faas open_calls" "inet faas allow" "bridge faas call_ifs" "bridge faas call_ports"; do
  [ "$(nft -j list set $s | jq '[.nftables[].set.elem // empty]|length')" = 0 ] || { bad "nft set $s not empty"; leaks=1; }; done
[ $leaks = 0 ] && ok "no leaks after DEL (veth, host-local IP, netns, nft elements)"
# DEL after the netns is already gone (agent crash / restart) must still release the IP
call_up Z; ip netns del faas-egress-Z
cni DEL bridge faas-Z Z && [ -z "$(ls "$IPAM_DIR/$NET" | grep -vE '^(lock|last_reserved_ip\.0)$')" ] \
  && ok "DEL with vanished netns: rc 0 and IP released" || bad "DEL with vanished netns"
cni DEL bridge faas-Z Z && ok "repeated DEL is idempotent (rc 0)" || bad "repeated DEL"
rm -f "$WORK/faas-Z.res" "$WORK/faas-Z.ns"; rm -rf /etc/netns/faas-egress-Z

# ================================================================= 4. timings
info "timing $ITER x (netns add, bridge ADD, loopback ADD, nft elems + isolated, nft del, bridge DEL, loopback DEL, netns del)"
: > "$WORK/times"
for i in $(seq "$ITER"); do
  n=T$i id=faas-T$i
  t0=$(now); ip netns add faas-egress-$n
  t1=$(now); cni ADD bridge $id $n > "$WORK/$id.res" || bad "ADD $i"; echo $n > "$WORK/$id.ns"
  t2=$(now); cni ADD loopback $id $n >/dev/null
  t3=$(now)
  IP[$n]=$(jq -r '.ips[0].address|split("/")[0]' "$WORK/$id.res")
  MAC[$n]=$(jq -r '.interfaces[]|select(.sandbox!=null)|.mac' "$WORK/$id.res")
  VETH[$n]=$(jq -r --arg br "$BR" '.interfaces[]|select(.sandbox==null and .name!=$br)|.name' "$WORK/$id.res")
  t4=$(now); call_policy $n 198.51.100.1/32:8080
  t5=$(now); nft -f - <<<"${ELEMS[$n]//add element/delete element}"; ELEMS[$n]=""
  t6=$(now); cni DEL bridge $id $n || bad "DEL $i"
  t7=$(now); cni DEL loopback $id $n
  t8=$(now); ip netns del faas-egress-$n; rm -f "$WORK/$id.res" "$WORK/$id.ns"
  t9=$(now)
  echo $(( (t1-t0)/1000 )) $(( (t2-t1)/1000 )) $(( (t3-t2)/1000 )) $(( (t5-t4)/1000 )) $(( (t6-t5)/1000 )) $(( (t7-t6)/1000 )) $(( (t8-t7)/1000 )) $(( (t9-t8)/1000 )) $(( (t3-t0+t5-t4)/1000 )) $(( (t9-t5)/1000 )) >> "$WORK/times"
done
cols=(netns_add bridge_ADD lo_ADD nft_add+isolate nft_del bridge_DEL lo_DEL netns_del TOTAL_up TOTAL_down)
for c in "${!cols[@]}"; do printf "  p50 %-16s %6s ms\n" "${cols[$c]}" "$(awk -v c=$((c+1)) '{print $c/1000}' "$WORK/times" | p50)"; done | tee "$WORK/timings.txt"
[ -z "$(ip -o link show master $BR)" ] && [ -z "$(ls "$IPAM_DIR/$NET" | grep -vE '^(lock|last_reserved_ip\.0)$')" ] \
  && ok "no leaks after $ITER ADD/DEL cycles" || bad "leaks after timing loop"

echo; echo "RESULT: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
