#!/usr/bin/env bash
# Test hosts for integration tests: N real OpenSSH servers on this machine.
#
#   tests/testhosts.sh up N [--state DIR] [--python PATH] [--devices K] [--subnet A.B.C.0/24]
#                           [--loopback]
#   tests/testhosts.sh down [--state DIR]
#   tests/testhosts.sh stop NAME [--state DIR]     # stop one host's sshd ("host down")
#   tests/testhosts.sh start NAME [--state DIR]    # start it again (same key, same address)
#   tests/testhosts.sh status [--state DIR]        # one line per host: name address pid|down
#
# Default DIR: /tmp/orchestrate-testhosts. Several sets may run at once: every name (bridge,
# veths, namespaces) and the subnet are derived from DIR, so sets with different DIRs never
# clash and `down` removes only its own set.
#
# netns variant (default, needs root, `ip` and `unshare`): each host thN is a network namespace
# `oth-<tag>-N` with address <subnet>.(N+2) on eth0, a veth into the bridge `othb<tag>` whose
# address <subnet>.1 is the gateway; loopback up. Inside it, `unshare --mount --uts --pid --fork
# --kill-child --mount-proc` gives the host its own hostname (thN), its own PID namespace whose
# PID 1 is `sshd -D`, and its own mount namespace with an overlay on /etc (so /etc/hccn.conf is
# per host: 8 devices, `address_<i>=<ip>`, distinct per host; so is /etc/machine-id) and
# DIR/work bind-mounted from
# DIR/hosts/thN/work (the job workdir, private per host), and a lean ~/.bashrc that only puts
# the inventory python's directory first on PATH (this machine's may run pyenv init on every
# command). /root, /tmp, /usr stay visible, so the node's python is this machine's.
#
# loopback variant (--loopback; no namespaces, root not needed): N sshd on 127.0.0.1 with
# distinct ports; per-host workdir DIR/hosts/thN/work; hostname and /etc/hccn.conf are shared.
#
# `up` writes into DIR:
#   inventory.yaml  all hosts (name thN), user, port, identity_file, workdir, python, devices,
#                   `known_hosts: DIR/known_hosts`, `ssh_config: DIR/ssh_config`
#   known_hosts     the hosts' real ed25519 keys         id_ed25519(.pub)  the client key
#   ssh_config      for `ssh -F DIR/ssh_config thN`      variant           netns | loopback
#   hosts/thN/      sshd_config, host key, sshd.log, hccn.conf, work/, pid
# `up` is idempotent (running hosts are kept, keys are reused, extra hosts are removed);
# `down` never fails on partial state and leaves no namespace, link, or sshd of this set behind.
set -euo pipefail

SELF="$(readlink -f "$0")"
SSHD=/usr/sbin/sshd

die() { echo "testhosts: $*" >&2; exit 1; }

usage() { sed -n '2,9p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# ---- names derived from the state dir -------------------------------------------------------

derive() {  # sets STATE TAG BRIDGE NSPREFIX VETHPREFIX
  mkdir -p "$STATE"
  STATE="$(cd "$STATE" && pwd -P)"
  TAG="$(printf '%s' "$STATE" | sha256sum | cut -c1-6)"
  BRIDGE="othb$TAG"
  NSPREFIX="oth-$TAG-"
  VETHPREFIX="oth$TAG"
}

default_subnet() {  # a /24 inside 10.64.0.0/10 picked from the tag
  local a=$((0x${TAG:0:2} % 64 + 64)) b=$((0x${TAG:2:2}))
  echo "10.$a.$b"
}

host_ip() { echo "$PREFIX.$(($1 + 2))"; }

# ---- sshd per host --------------------------------------------------------------------------

ensure_sshd_installed() {  # openssh-server (sshd) and openssh-client (ssh-keygen, ssh)
  local pkgs=()
  [ -x "$SSHD" ] || pkgs+=(openssh-server)
  command -v ssh-keygen >/dev/null || pkgs+=(openssh-client)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${pkgs[*]} and not root: install them"
  command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get: install them"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}") \
    >/dev/null || die "apt-get install ${pkgs[*]} failed"
  [ -x "$SSHD" ] || die "openssh-server installed but $SSHD is missing"
}

write_host_files() {  # $1 index, $2 listen address, $3 port
  local i=$1 addr=$2 port=$3 hd="$STATE/hosts/th$1" d
  mkdir -p "$hd/work" "$hd/etc.upper" "$hd/etc.work"
  [ -f "$hd/ssh_host_ed25519_key" ] ||
    ssh-keygen -q -t ed25519 -N '' -C "th$i" -f "$hd/ssh_host_ed25519_key"
  cat >"$hd/sshd_config" <<EOF
# test host th$i of $STATE (written by tests/testhosts.sh)
ListenAddress $addr:$port
HostKey $hd/ssh_host_ed25519_key
PidFile none
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthenticationMethods publickey
PermitRootLogin prohibit-password
AuthorizedKeysFile $STATE/authorized_keys
StrictModes no
MaxStartups 512
MaxSessions 512
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
Subsystem sftp internal-sftp
LogLevel INFO
EOF
  # 8 fake devices; host i, device d -> 192.98.<90+d>.<10+i> (distinct per host and device)
  : >"$hd/hccn.conf.tmp"
  for d in 0 1 2 3 4 5 6 7; do
    printf 'address_%d=192.98.%d.%d\nnetmask_%d=255.255.255.0\n' \
      "$d" $((90 + d)) $((10 + i)) "$d" >>"$hd/hccn.conf.tmp"
  done
  mv -f "$hd/hccn.conf.tmp" "$hd/hccn.conf"
  cp -f "$hd/hccn.conf" "$hd/etc.upper/hccn.conf"
  # its own /etc/machine-id, as separate machines have (check tells machines apart by it)
  printf '%s' "$STATE/th$i" | md5sum | cut -c1-32 >"$hd/etc.upper/machine-id"
  # A lean ~/.bashrc for the host (this machine's may run pyenv/conda init on every command):
  # only the inventory's python directory first on PATH, as on a prepared node.
  printf '# test host th%s: ~/.bashrc (tests/testhosts.sh)\nexport PATH=%q:"$PATH"\n' \
    "$i" "$(dirname "$PYTHON")" >"$hd/bashrc"
}

alive() {  # $1 pid: exists and is not a zombie
  [ -r "/proc/$1/stat" ] && ! awk '{exit ($3 == "Z") ? 0 : 1}' "/proc/$1/stat" 2>/dev/null
}

host_pid() {  # $1 index -> prints pid if alive
  local f="$STATE/hosts/th$1/pid" pid
  [ -f "$f" ] || return 1
  pid="$(cat "$f" 2>/dev/null || true)"
  [ -n "$pid" ] && alive "$pid" && echo "$pid"
}

# Runs inside the host's namespaces (called by start_host): hostname, mounts, then sshd as PID 1.
inner() {  # _inner STATE INDEX
  local hd="$STATE/hosts/th$1"
  hostname "th$1"
  mount -t overlay overlay -o "lowerdir=/etc,upperdir=$hd/etc.upper,workdir=$hd/etc.work" /etc
  mount --bind "$hd/work" "$STATE/work"
  local home
  home="$(getent passwd "$(id -un)" | cut -d: -f6)"
  if [ -n "$home" ] && [ -f "$home/.bashrc" ] && [ -f "$hd/bashrc" ]; then
    mount --bind "$hd/bashrc" "$home/.bashrc"
  fi
  exec "$SSHD" -D -e -f "$hd/sshd_config"
}

start_host() {  # $1 index
  local i=$1 hd="$STATE/hosts/th$1" pid
  if [ "$VARIANT" = netns ]; then
    mkdir -p "$STATE/work"
    rm -rf "$hd/etc.work" && mkdir -p "$hd/etc.work"
    setsid ip netns exec "$NSPREFIX$i" unshare --mount --uts --pid --fork --kill-child \
      --mount-proc "$SELF" _inner "$STATE" "$i" </dev/null >>"$hd/sshd.log" 2>&1 &
  else
    setsid "$SSHD" -D -e -f "$hd/sshd_config" </dev/null >>"$hd/sshd.log" 2>&1 &
  fi
  pid=$!
  echo "$pid" >"$hd/pid"
}

stop_host() {  # $1 index
  local pid
  # netns: SIGKILL everything in the namespace (sshd is PID 1 of its PID namespace, so its death
  # takes every session and stray process of the host with it); unshare then exits by itself.
  # (unshare ignores SIGTERM while it waits for its child.)
  if [ "$VARIANT" = netns ]; then kill_netns_pids "$NSPREFIX$1"; fi
  if pid="$(host_pid "$1")"; then
    if [ "$VARIANT" = loopback ]; then
      pkill -KILL -P "$pid" 2>/dev/null || true  # the per-connection sshd processes
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$pid" || break; sleep 0.02; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$STATE/hosts/th$1/pid"
}

kill_netns_pids() {  # every process living in the namespace (sshd, sessions, strays)
  local pids
  pids="$(ip netns pids "$1" 2>/dev/null || true)"
  [ -z "$pids" ] && return 0
  # shellcheck disable=SC2086
  kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 50); do
    [ -z "$(ip netns pids "$1" 2>/dev/null || true)" ] && return 0
    sleep 0.05
  done
}

wait_listening() {  # $1 address $2 port: until sshd answers with its banner
  for _ in $(seq 100); do
    if timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2 && head -c 4 <&3" 2>/dev/null | grep -q SSH-
    then return 0; fi
    sleep 0.05
  done
  return 1
}

# ---- network (netns variant) ----------------------------------------------------------------

ensure_bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    local clash
    clash="$(ip -4 -o addr show | awk -v p="$PREFIX." 'index($4, p) == 1 {print $2}' | head -1)"
    [ -z "$clash" ] || die "subnet $PREFIX.0/24 already used by $clash; pass --subnet"
    ip link add "$BRIDGE" type bridge
    ip addr add "$PREFIX.1/24" dev "$BRIDGE"
  fi
  ip link set "$BRIDGE" up
}

ensure_netns() {  # $1 index
  local i=$1 ns="$NSPREFIX$1" veth="$VETHPREFIX$1" ip
  ip="$(host_ip "$i")"
  [ -e "/run/netns/$ns" ] || ip netns add "$ns"
  if ! ip link show "$veth" >/dev/null 2>&1; then
    ip -n "$ns" link del eth0 2>/dev/null || true
    ip link add "$veth" type veth peer name eth0 netns "$ns"
  fi
  ip link set "$veth" master "$BRIDGE" up
  printf '%s\n' "link set lo up" "addr replace $ip/24 dev eth0" "link set eth0 up" \
    "route replace default via $PREFIX.1 dev eth0" | ip -n "$ns" -batch -
}

remove_netns() {  # $1 namespace name
  kill_netns_pids "$1"
  ip netns del "$1" 2>/dev/null || true
}

# ---- commands -------------------------------------------------------------------------------

read_state() {  # VARIANT PREFIX COUNT BASEPORT from DIR/state, if any
  VARIANT="${VARIANT:-}" PREFIX="${PREFIX:-}" COUNT=0 BASEPORT=0
  if [ -f "$STATE/state" ]; then
    # shellcheck disable=SC1091
    . "$STATE/state"
  fi
}

write_inventory() {
  local i port addr key user tmp="$STATE/inventory.yaml.tmp"
  user="$(id -un)"
  {
    echo "# Test hosts written by: tests/testhosts.sh up $COUNT --state $STATE ($VARIANT variant)"
    echo "known_hosts: $STATE/known_hosts"
    echo "host_key_policy: strict"
    echo "ssh_config: $STATE/ssh_config"
    echo "defaults:"
    echo "  user: $user"
    echo "  identity_file: $STATE/id_ed25519"
    echo "  python: $PYTHON"
    echo "  devices: $DEVICES"
    [ "$VARIANT" = netns ] && echo "  port: 22" && echo "  workdir: $STATE/work"
    echo "nodes:"
    for ((i = 0; i < COUNT; i++)); do
      if [ "$VARIANT" = netns ]; then
        echo "  - {name: th$i, host: $(host_ip "$i")}"
      else
        echo "  - {name: th$i, host: 127.0.0.1, port: $((BASEPORT + i)), workdir: $STATE/hosts/th$i/work}"
      fi
    done
  } >"$tmp"
  mv -f "$tmp" "$STATE/inventory.yaml"

  : >"$STATE/known_hosts.tmp"
  : >"$STATE/ssh_config.tmp"
  for ((i = 0; i < COUNT; i++)); do
    if [ "$VARIANT" = netns ]; then addr="$(host_ip "$i")" port=22 key="$addr"
    else addr=127.0.0.1 port=$((BASEPORT + i)) key="[127.0.0.1]:$port"; fi
    echo "$key $(cut -d' ' -f1,2 "$STATE/hosts/th$i/ssh_host_ed25519_key.pub")" \
      >>"$STATE/known_hosts.tmp"
    cat >>"$STATE/ssh_config.tmp" <<EOF
Host th$i $( [ "$VARIANT" = netns ] && echo "$addr")
  HostName $addr
  Port $port
  User $user
  IdentityFile $STATE/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $STATE/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  KexAlgorithms curve25519-sha256
  LogLevel ERROR
EOF
  done
  mv -f "$STATE/known_hosts.tmp" "$STATE/known_hosts"
  mv -f "$STATE/ssh_config.tmp" "$STATE/ssh_config"
}

cmd_up() {
  local want=$1 i prev
  [[ "$want" =~ ^[0-9]+$ ]] && [ "$want" -ge 1 ] && [ "$want" -le 250 ] ||
    die "up: expected a host count 1..250, got '$want'"
  derive
  local want_variant="$VARIANT" want_prefix="$PREFIX"
  read_state
  prev=$COUNT
  if [ -n "$want_variant" ] && [ "$prev" -gt 0 ] && [ "$VARIANT" != "$want_variant" ]; then
    die "$STATE holds a $VARIANT set; run 'down --state $STATE' first"
  fi
  VARIANT="${want_variant:-${VARIANT:-netns}}"
  if [ "$VARIANT" = netns ]; then
    [ "$(id -u)" = 0 ] || die "the netns variant needs root (or use --loopback)"
    command -v unshare >/dev/null && command -v ip >/dev/null ||
      die "the netns variant needs 'ip' and 'unshare' (or use --loopback)"
  fi
  ensure_sshd_installed
  mkdir -p /run/sshd 2>/dev/null || true
  if [ -n "$want_prefix" ]; then
    [ -z "$PREFIX" ] || [ "$prev" -eq 0 ] || [ "$PREFIX" = "$want_prefix" ] ||
      die "$STATE already uses subnet $PREFIX.0/24; run down first"
    PREFIX="$want_prefix"
  fi
  PREFIX="${PREFIX:-$(default_subnet)}"
  if [ "$VARIANT" = loopback ] && [ "$BASEPORT" -eq 0 ]; then
    BASEPORT=$((20000 + 0x${TAG:0:4} % 200 * 100))
  fi
  # remove hosts beyond the new count (from an earlier, larger `up`)
  for ((i = want; i < prev; i++)); do
    stop_host "$i"
    [ "$VARIANT" = netns ] && remove_netns "$NSPREFIX$i"
    rm -rf "$STATE/hosts/th$i"
  done
  COUNT=$want
  printf 'VARIANT=%s\nPREFIX=%s\nCOUNT=%s\nBASEPORT=%s\n' "$VARIANT" "$PREFIX" "$COUNT" \
    "$BASEPORT" >"$STATE/state"

  [ -f "$STATE/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C testhosts -f "$STATE/id_ed25519"
  cp -f "$STATE/id_ed25519.pub" "$STATE/authorized_keys"
  [ "$VARIANT" = netns ] && ensure_bridge
  for ((i = 0; i < COUNT; i++)); do
    if [ "$VARIANT" = netns ]; then
      write_host_files "$i" "$(host_ip "$i")" 22
      # a running host keeps its network as it is (idempotent `up` stays fast)
      host_pid "$i" >/dev/null && [ -e "/run/netns/$NSPREFIX$i" ] || ensure_netns "$i"
    else
      write_host_files "$i" 127.0.0.1 $((BASEPORT + i))
    fi
    host_pid "$i" >/dev/null || start_host "$i"
  done
  for ((i = 0; i < COUNT; i++)); do
    if [ "$VARIANT" = netns ]; then addr="$(host_ip "$i")" port=22
    else addr=127.0.0.1 port=$((BASEPORT + i)); fi
    wait_listening "$addr" "$port" ||
      die "th$i: sshd not answering on $addr:$port; see $STATE/hosts/th$i/sshd.log"
  done
  write_inventory
  echo "$STATE/inventory.yaml"
}

cmd_down() {
  derive
  read_state
  local i ns
  for f in "$STATE"/hosts/th*/pid; do
    [ -f "$f" ] || continue
    i="${f%/pid}"; i="${i##*/th}"
    stop_host "$i"
  done
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NSPREFIX" || true); do
    remove_netns "$ns"
  done
  for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1 |
             grep -E "^(${VETHPREFIX}[0-9]+|${BRIDGE})\$" || true); do
    ip link del "$l" 2>/dev/null || true
  done
  rm -rf "$STATE/hosts" "$STATE/work" "$STATE/inventory.yaml" "$STATE/known_hosts" \
    "$STATE/ssh_config" "$STATE/authorized_keys" "$STATE/id_ed25519" "$STATE/id_ed25519.pub" \
    "$STATE/state" "$STATE"/*.tmp
  rmdir "$STATE" 2>/dev/null || true
}

index_of() {  # NAME (thN) -> N
  [[ "$1" =~ ^th([0-9]+)$ ]] || die "expected a host name thN, got '$1'"
  local i="${BASH_REMATCH[1]}"
  [ "$i" -lt "$COUNT" ] || die "no host $1 in $STATE (count $COUNT)"
  echo "$i"
}

cmd_stop() {
  derive; read_state
  local i; i="$(index_of "$1")"
  stop_host "$i"
}

cmd_start() {
  derive; read_state
  local i addr port; i="$(index_of "$1")"
  host_pid "$i" >/dev/null || start_host "$i"
  if [ "$VARIANT" = netns ]; then addr="$(host_ip "$i")" port=22
  else addr=127.0.0.1 port=$((BASEPORT + i)); fi
  wait_listening "$addr" "$port" || die "th$i: sshd not answering on $addr:$port"
}

cmd_status() {
  derive; read_state
  local i pid addr
  for ((i = 0; i < COUNT; i++)); do
    if [ "$VARIANT" = netns ]; then addr="$(host_ip "$i"):22"
    else addr="127.0.0.1:$((BASEPORT + i))"; fi
    pid="$(host_pid "$i" || echo down)"
    echo "th$i $addr $pid"
  done
}

# ---- argument parsing -----------------------------------------------------------------------

[ $# -ge 1 ] || usage
CMD=$1; shift
if [ "$CMD" = _inner ]; then STATE=$1; inner "$2"; fi

STATE=/tmp/orchestrate-testhosts VARIANT="" PREFIX="" PYTHON="" DEVICES=8
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --state) STATE=${2:?--state needs a directory}; shift 2 ;;
    --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
    --devices) DEVICES=${2:?--devices needs a count}; shift 2 ;;
    --subnet)
      [[ "${2:-}" =~ ^([0-9]+\.[0-9]+\.[0-9]+)\.0/24$ ]] || die "--subnet expects A.B.C.0/24"
      PREFIX="${BASH_REMATCH[1]}"; shift 2 ;;
    --loopback) VARIANT=loopback; shift ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
[[ "$DEVICES" =~ ^[0-9]+$ ]] && [ "$DEVICES" -ge 1 ] && [ "$DEVICES" -le 16 ] ||
  die "--devices expects 1..16, got '$DEVICES'"

case "$CMD" in
  up)
    [ ${#ARGS[@]} -eq 1 ] || usage
    if [ -z "$PYTHON" ]; then
      PYTHON="$(python -c 'import sys; print(sys.executable)' 2>/dev/null ||
                python3 -c 'import sys; print(sys.executable)')"
    else
      PYTHON="$(command -v "$PYTHON" || die "--python $PYTHON: not found")"
    fi
    cmd_up "${ARGS[0]}" ;;
  down) [ ${#ARGS[@]} -eq 0 ] || usage; cmd_down ;;
  stop) [ ${#ARGS[@]} -eq 1 ] || usage; cmd_stop "${ARGS[0]}" ;;
  start) [ ${#ARGS[@]} -eq 1 ] || usage; cmd_start "${ARGS[0]}" ;;
  status) [ ${#ARGS[@]} -eq 0 ] || usage; cmd_status ;;
  *) usage ;;
esac
