#!/usr/bin/env bash
# Installs (or upgrades) this machine from an unpacked release bundle
# (deploy/release.sh), by role. Run as root on Debian 12 from the bundle's
# directory; running it again with a newer bundle upgrades in place.
#
#   install.sh --role control-plane|agent|all [options]
#
# Every machine:
#   --name NAME          this machine's node / replica / etcd member name
#                        [default: the hostname]
#   --address ADDR       the address other machines reach this one at
#                        [default: the first global IPv4 address]
# control-plane:
#   --etcd-cluster N=A,… every etcd member, name=address, this one included
#                        [default: this one]: the names the etcd
#                        certificates carry and the members the control
#                        plane reaches
#   --join-etcd          add this member to the running cluster of the
#                        others (member add through them); without it,
#                        this machine forms a new cluster of one member,
#                        which the others then join
#   --pki DIR            the cluster's keys from the first control-plane
#                        machine (etcd/, registry/, secrets.key); without
#                        it they are made here (the first machine)
#   --registry HOST:PORT the registry, if another machine runs it
#                        [default: this machine runs it on ADDR:5000]
# agent:
#   --control-plane URL,… every replica [default with --role all:
#                        https://ADDR:7070]
#   --join TOKEN --ca-hash sha256:HEX
#                        a join token (`faasctl node token create`); with
#                        --role all one is made here
#   --spots N            [default: 4]
#
# Layout: the release in /opt/faas/releases/VERSION, /opt/faas/current
# pointing at the one in use; configuration in /etc/faas (what exists is
# kept: an upgrade changes binaries and units, not settings); keys in
# /etc/faas/pki (root's); logs in the journal (journalctl -u faas-agent).
set -euo pipefail

bundle=$(cd "$(dirname "$0")" && pwd)
role= name= address= etcd_cluster= join_etcd=0 pki_from= registry= control_plane= join= ca_hash= spots=4
while [ $# -gt 0 ]; do
    case $1 in
    --role) role=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --address) address=$2; shift 2 ;;
    --etcd-cluster) etcd_cluster=$2; shift 2 ;;
    --join-etcd) join_etcd=1; shift ;;
    --pki) pki_from=$2; shift 2 ;;
    --registry) registry=$2; shift 2 ;;
    --control-plane) control_plane=$2; shift 2 ;;
    --join) join=$2; shift 2 ;;
    --ca-hash) ca_hash=$2; shift 2 ;;
    --spots) spots=$2; shift 2 ;;
    -h | --help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

die() { echo "[install] ERROR: $*" >&2; exit 1; }
step() { echo "[install] == $*" >&2; }

[ "$(id -u)" -eq 0 ] || die "run as root"
case $role in
control-plane | agent | all) ;;
*) die "--role control-plane|agent|all" ;;
esac
has_cp() { [ "$role" != agent ]; }
has_agent() { [ "$role" != control-plane ]; }
[ -s "$bundle/VERSION" ] && [ -x "$bundle/bin/faas-agent" ] || die "run install.sh from an unpacked release bundle"
version=$(cat "$bundle/VERSION")
name=${name:-$(tr '[:upper:]' '[:lower:]' </proc/sys/kernel/hostname | tr -c 'a-z0-9\n' '-')}
address=${address:-$(ip -4 -o addr show scope global | awk '{split($4, a, "/"); print a[1]; exit}')}
[ -n "$address" ] || die "no global IPv4 address found: give --address"
if [ "$role" = agent ]; then
    [ -n "$control_plane" ] || die "an agent needs --control-plane URL,…"
    [ -n "$join" ] && [ -n "$ca_hash" ] || [ -s /var/lib/faas/agent/pki/node.crt ] ||
        die "an agent needs --join TOKEN --ca-hash sha256:… (faasctl node token create)"
fi
etcd_cluster=${etcd_cluster:-$name=$address}
control_plane=${control_plane:-https://$address:7070}
registry_here=0
if has_cp && [ -z "$registry" ]; then
    registry=$address:5000
    registry_here=1
fi

# --- packages ----------------------------------------------------------------
step "packages for role $role"
packages=(ca-certificates iproute2)
has_cp && packages+=(etcd-server etcd-client)
[ "$registry_here" = 1 ] && packages+=(docker-registry)
has_agent && packages+=(containerd runc crun containernetworking-plugins nftables)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    # Their services are configured before they first start: nothing starts
    # during the install (Debian's etcd would form a cluster of its own).
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    # From what apt knows first (a machine given its packages offline);
    # with fresh package lists if that fails.
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
    apt_install "${missing[@]}" 2>/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt_install "${missing[@]}"
    } || die "installing ${missing[*]}"
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
fi

# --- the release ---------------------------------------------------------------
step "faas $version into /opt/faas/releases/$version"
(cd "$bundle" && sha256sum --quiet -c SHA256SUMS) || die "the bundle does not match its SHA256SUMS"
release=/opt/faas/releases/$version
if [ ! -d "$release" ]; then
    mkdir -p /opt/faas/releases
    cp -a "$bundle" "$release.new"
    mv "$release.new" "$release"
fi
previous=$(readlink /opt/faas/current 2>/dev/null || true)
ln -sfn "releases/$version" /opt/faas/current.new
mv -T /opt/faas/current.new /opt/faas/current
# faasctl for people; the shim on containerd's PATH.
ln -sfn /opt/faas/current/bin/faasctl /usr/local/bin/faasctl
ln -sfn /opt/faas/current/bin/containerd-shim-faas-v1 /usr/local/bin/containerd-shim-faas-v1
install -d -m 0755 /etc/faas
install -d -m 0700 /etc/faas/pki
cp "$bundle"/systemd/*.service /etc/systemd/system/
systemctl daemon-reload
bin=/opt/faas/current/bin

# Writes FILE from stdin unless it exists and is faas's (settings survive
# upgrades; a package's own default is replaced).
keep_or_write() {
    if [ -e "$1" ] && grep -q faas "$1"; then
        cat >/dev/null
    else
        install -m "${2:-0644}" /dev/stdin "$1"
    fi
}

# --- control plane -------------------------------------------------------------
if has_cp; then
    members=() sans=()
    IFS=, read -r -a members <<<"$etcd_cluster"
    for m in "${members[@]}"; do sans+=("${m#*=}"); done
    step "keys in /etc/faas/pki"
    if [ -n "$pki_from" ]; then
        cp -r "$pki_from"/. /etc/faas/pki/
    fi
    "$bin/faas-controlplane" etcd-certs --dir /etc/faas/pki/etcd --san "$(IFS=,; echo "${sans[*]}")" >/dev/null
    "$bin/faas-controlplane" registry-certs --dir /etc/faas/pki/registry --san "${registry%:*}" >/dev/null
    [ -s /etc/faas/pki/secrets.key ] || "$bin/faas-controlplane" secrets-key --file /etc/faas/pki/secrets.key >/dev/null
    chmod -R go-rwx /etc/faas/pki

    step "etcd member $name ($address)"
    # etcd runs as Debian's etcd user: its own copy of what it needs.
    install -d -m 0700 -o etcd -g etcd /etc/faas/etcd-tls
    for f in ca.crt member.crt member.key; do
        install -m 0600 -o etcd -g etcd "/etc/faas/pki/etcd/$f" "/etc/faas/etcd-tls/$f"
    done
    # The first machine forms a cluster of its own member; the others join
    # it one by one (member add), each start then reaching quorum. (Three
    # members formed together would each wait for the others: an install
    # that starts etcd and waits for it could not finish on any of them.)
    initial="$name=https://$address:2380"
    state=new
    if [ "$join_etcd" = 1 ] && [ ! -d /var/lib/etcd/faas/member ]; then
        state=existing
        others=$(for m in "${members[@]}"; do [ "${m%%=*}" = "$name" ] || printf 'https://%s:2379,' "${m#*=}"; done)
        etcdctl=(etcdctl --endpoints "${others%,}" --cacert /etc/faas/pki/etcd/ca.crt
            --cert /etc/faas/pki/etcd/client.crt --key /etc/faas/pki/etcd/client.key)
        if ! ETCDCTL_API=3 "${etcdctl[@]}" member list | grep -q "https://$address:2380"; then
            # etcd refuses an add until the last member added has been
            # connected for a while ("unhealthy cluster": its 5 s health
            # interval), as when the machines are installed one after the
            # other: try again for a minute.
            added=0
            for _ in $(seq 30); do
                if ETCDCTL_API=3 "${etcdctl[@]}" member add "$name" --peer-urls "https://$address:2380" >&2; then
                    added=1
                    break
                fi
                sleep 2
            done
            [ "$added" = 1 ] || die "etcd member add $name through ${others%,}"
        fi
        # The cluster as it is now (the members that answered), with this one.
        initial=$(ETCDCTL_API=3 "${etcdctl[@]}" member list -w simple |
            awk -F', ' '{n=$3; if (n == "") n = "'"$name"'"; split($4, u, ","); printf "%s=%s,", n, u[1]}')
        initial=${initial%,}
    fi
    sed -e "s|^ETCD_NAME=.*|ETCD_NAME=\"$name\"|" \
        -e "s|^ETCD_LISTEN_CLIENT_URLS=.*|ETCD_LISTEN_CLIENT_URLS=\"https://$address:2379,https://127.0.0.1:2379\"|" \
        -e "s|^ETCD_ADVERTISE_CLIENT_URLS=.*|ETCD_ADVERTISE_CLIENT_URLS=\"https://$address:2379\"|" \
        -e "s|^ETCD_LISTEN_PEER_URLS=.*|ETCD_LISTEN_PEER_URLS=\"https://$address:2380\"|" \
        -e "s|^ETCD_INITIAL_ADVERTISE_PEER_URLS=.*|ETCD_INITIAL_ADVERTISE_PEER_URLS=\"https://$address:2380\"|" \
        -e "s|^ETCD_INITIAL_CLUSTER=.*|ETCD_INITIAL_CLUSTER=\"$initial\"|" \
        -e "s|^ETCD_INITIAL_CLUSTER_STATE=.*|ETCD_INITIAL_CLUSTER_STATE=\"$state\"|" \
        -e "s|/etc/faas/pki/etcd/|/etc/faas/etcd-tls/|g" \
        -e 's| *# THIS_[A-Z]*$||' \
        "$bundle/config/etcd/member.env" | keep_or_write /etc/default/etcd
    systemctl enable --now etcd >/dev/null 2>&1 || die "etcd did not start (journalctl -u etcd)"

    if [ "$registry_here" = 1 ]; then
        step "registry on $registry"
        install -d -m 0750 -o root -g docker-registry /etc/faas/registry-tls
        for f in tls.crt tls.key token-signer.crt; do
            install -m 0640 -o root -g docker-registry "/etc/faas/pki/registry/$f" "/etc/faas/registry-tls/$f"
        done
        sed -e "s|/etc/faas/pki/registry/|/etc/faas/registry-tls/|g" \
            "$bundle/config/registry/config.yml" | keep_or_write /etc/docker/registry/config.yml
        systemctl enable --now docker-registry >/dev/null 2>&1 || die "the registry did not start"
    fi

    step "faas-controlplane $name"
    endpoints=$(for m in "${members[@]}"; do printf '"https://%s:2379", ' "${m#*=}"; done)
    sed -e "s|^listen = .*|listen = \"0.0.0.0:7070\"|" \
        -e "s|^etcd = .*|etcd = [${endpoints%, }]|" \
        -e "s|^registry = .*|registry = \"$registry\"|" \
        -e "s|^# name = .*|name = \"$name\"|" \
        "$bundle/config/controlplane.toml" | keep_or_write /etc/faas/controlplane.toml
    # Where other replicas and the agents reach it, and its certificate's names.
    printf 'FAAS_ADVERTISE=https://%s:7070\nFAAS_TLS_SAN=%s\n' "$address" "$address" |
        keep_or_write /etc/faas/controlplane.env 0600
    systemctl enable faas-controlplane >/dev/null 2>&1
    systemctl restart faas-controlplane

    step "faas-gateway (HTTP, 127.0.0.1:8080)"
    # The cluster CA the replicas' certificates chain to: written by the
    # control plane at its first start (public, so 0644).
    state_dir=/var/lib/private/faas-controlplane
    for _ in $(seq 60); do [ -s "$state_dir/ca.crt" ] && break; sleep 1; done
    [ -s "$state_dir/ca.crt" ] || die "the control plane wrote no ca.crt (journalctl -u faas-controlplane)"
    install -d -m 0755 /etc/faas/gateway
    install -m 0644 "$state_dir/ca.crt" /etc/faas/gateway/ca.crt
    # Loopback until the operator gives it TLS (tls_cert/tls_key): callers'
    # tokens travel in its requests.
    keep_or_write /etc/faas/gateway.toml <"$bundle/config/gateway.toml"
    systemctl enable faas-gateway >/dev/null 2>&1
    systemctl restart faas-gateway
fi

# --- agent -----------------------------------------------------------------------
if has_agent; then
    step "containerd"
    systemctl enable --now containerd >/dev/null 2>&1 || die "containerd did not start"
    oci_runtime=runc
    # crun wants cgroup v2 (Debian 12's default under systemd).
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && oci_runtime=crun
    step "faas-agent $name ($spots spots, $oci_runtime)"
    cps=$(IFS=,; for u in $control_plane; do printf '"%s", ' "$u"; done)
    sed -e "s|^control_plane = .*|control_plane = [${cps%, }]|" \
        -e "s|^spots = .*|spots = $spots|" \
        -e "s|^oci_runtime = .*|oci_runtime = \"$oci_runtime\"|" \
        -e "s|^# node = .*|node = \"$name\"|" \
        "$bundle/config/agent.toml" | keep_or_write /etc/faas/agent.toml
    if [ ! -s /var/lib/faas/agent/pki/node.crt ]; then
        if [ -z "$join" ]; then
            # Role all: a token from the control plane beside it.
            state_dir=/var/lib/private/faas-controlplane
            for _ in $(seq 60); do [ -s "$state_dir/admin.token" ] && [ -s "$state_dir/ca.crt" ] && break; sleep 1; done
            reply=$("$bin/faasctl" --endpoint "https://127.0.0.1:7070" --ca-file "$state_dir/ca.crt" \
                --token-file "$state_dir/admin.token" node token create --ttl 10m -o json) ||
                die "making a join token through the local control plane"
            join=$(sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' <<<"$reply")
            ca_hash=$(sed -n 's/.*"ca_hash": *"\([^"]*\)".*/\1/p' <<<"$reply")
        fi
        printf 'FAAS_JOIN_TOKEN=%s\nFAAS_CA_HASH=%s\n' "$join" "$ca_hash" >/etc/faas/agent.env
        chmod 0600 /etc/faas/agent.env
    fi
    systemctl enable faas-agent >/dev/null 2>&1
    systemctl restart faas-agent
fi

step "installed faas $version (role $role)${previous:+, was ${previous#releases/}}"
