#!/usr/bin/env bash
# A real Slurm cluster on the test hosts: munge + slurmctld on this machine, one slurmd per host.
#
#   tests/slurmhosts.sh up N [--state DIR] [--python PATH] [--devices K]
#   tests/slurmhosts.sh down [--state DIR]
#   tests/slurmhosts.sh status [--state DIR]     # sinfo of the set's cluster
#
# `up` makes N network-namespace hosts with tests/testhosts.sh (same --state), then
#   - munged of its own (key, socket, pid, log under DIR/slurm/munge; slurm.conf names the
#     socket with AuthInfo), run as the munge user;
#   - DIR/slurm/slurm.conf: SlurmctldHost = this machine's hostname with the bridge gateway
#     address, a port derived from DIR (several sets never clash), NodeName=thN per host
#     (CPUs = --devices), partition `debug` (default), no accounting; cgroup.conf (v1);
#   - slurmctld on this machine, then, inside each host over its ssh, cgroup v1 hierarchies
#     mounted on a tmpfs at /sys/fs/cgroup (slurmd 22.05 needs them) and `slurmd -N thN`;
#   - waits until `sinfo` shows every node idle, and rewrites DIR/inventory.yaml with
#     `backend: slurm`, `partition: debug` and `slurm_conf: DIR/slurm/slurm.conf`, so that
#     `orchestrate up -i DIR/inventory.yaml` submits there as it is.
# Installs the Debian packages (slurmctld slurmd slurm-client munge) when missing (root).
# `down` stops every slurmd, slurmctld and munged of the set, then the hosts; it never fails
# on partial state. Measured recipe: ../shared/NOTES.md "Slurm on test hosts".
set -euo pipefail

SELF="$(readlink -f "$0")"
HOSTS="$(dirname "$SELF")/testhosts.sh"

die() { echo "slurmhosts: $*" >&2; exit 1; }

usage() { sed -n '2,5p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2; }

ensure_packages() {
  local pkgs=()
  command -v slurmctld >/dev/null || [ -x /usr/sbin/slurmctld ] || pkgs+=(slurmctld)
  command -v slurmd >/dev/null || [ -x /usr/sbin/slurmd ] || pkgs+=(slurmd)
  command -v sbatch >/dev/null || pkgs+=(slurm-client)
  command -v munged >/dev/null || [ -x /usr/sbin/munged ] || pkgs+=(munge)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${pkgs[*]} and not root: install them"
  command -v apt-get >/dev/null || die "missing ${pkgs[*]} and no apt-get: install them"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}") \
    >/dev/null || die "apt-get install ${pkgs[*]} failed"
}

paths() {  # SL (slurm dir), CONF, MSOCK (munge socket), PORT, GATEWAY, COUNT
  STATE="$(cd "$STATE" && pwd -P)"
  SL="$STATE/slurm"
  CONF="$SL/slurm.conf"
  MSOCK="$SL/munge/munge.socket"
  local tag
  tag="$(printf '%s' "$STATE" | sha256sum | cut -c1-4)"
  PORT=$((30000 + 0x$tag % 5000 * 2))
  PREFIX="" COUNT=0
  if [ -f "$STATE/state" ]; then
    # shellcheck disable=SC1091
    . "$STATE/state"
  fi
  GATEWAY="$PREFIX.1"
}

alive_pidfile() {  # $1 pid file -> prints the pid when it lives
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null || true)"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_munge() {
  local md="$SL/munge"
  mkdir -p "$md"
  chmod 0711 "$STATE" "$SL"  # the munge user must reach its own folder
  [ -f "$md/munge.key" ] || head -c 1024 /dev/urandom >"$md/munge.key"
  chown -R munge: "$md"
  chmod 0755 "$md"  # munged wants its socket folder reachable by every client
  chmod 0400 "$md/munge.key"
  alive_pidfile "$md/munged.pid" >/dev/null && return 0
  su -s /bin/sh munge -c "exec /usr/sbin/munged --socket=$md/munge.socket \
    --key-file=$md/munge.key --pid-file=$md/munged.pid --log-file=$md/munged.log \
    --seed-file=$md/munged.seed" || die "munged did not start; see $md/munged.log"
}

write_conf() {
  local i
  mkdir -p "$SL/ctld" "$SL/log"
  {
    echo "# Slurm test cluster of $STATE (written by tests/slurmhosts.sh)"
    echo "ClusterName=orchtest"
    echo "SlurmctldHost=$(hostname)($GATEWAY)"
    echo "SlurmctldPort=$PORT"
    echo "SlurmdPort=$((PORT + 1))"
    echo "AuthType=auth/munge"
    echo "AuthInfo=socket=$MSOCK"
    echo "CredType=cred/munge"
    echo "SlurmUser=root"
    echo "SlurmdUser=root"
    echo "ProctrackType=proctrack/linuxproc"
    echo "TaskPlugin=task/none"
    echo "SelectType=select/cons_tres"
    echo "SelectTypeParameters=CR_CPU"
    echo "MpiDefault=none"
    echo "JobAcctGatherType=jobacct_gather/none"
    echo "AccountingStorageType=accounting_storage/none"
    echo "MailProg=/bin/true"
    echo "ReturnToService=2"
    echo "KillWait=15"
    echo "MinJobAge=600"
    echo "SchedulerParameters=defer_batch"
    echo "StateSaveLocation=$SL/ctld"
    echo "SlurmdSpoolDir=$SL/spool/%n"
    echo "SlurmctldPidFile=$SL/slurmctld.pid"
    echo "SlurmdPidFile=$SL/slurmd.%n.pid"
    echo "SlurmctldLogFile=$SL/log/slurmctld.log"
    echo "SlurmdLogFile=$SL/log/slurmd.%n.log"
    for ((i = 0; i < COUNT; i++)); do
      echo "NodeName=th$i NodeAddr=$PREFIX.$((i + 2)) CPUs=$DEVICES RealMemory=1000 State=UNKNOWN"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF.tmp"
  mv -f "$CONF.tmp" "$CONF"
  echo "CgroupPlugin=cgroup/v1" >"$SL/cgroup.conf"
}

start_slurmd() {  # $1 index: inside the host, over its ssh
  local i=$1
  # shellcheck disable=SC2016
  ssh -F "$STATE/ssh_config" "th$i" "set -e
    if ! mountpoint -q /sys/fs/cgroup; then mount -t tmpfs cgroup_root /sys/fs/cgroup; fi
    for c in freezer cpuset memory devices; do
      mkdir -p /sys/fs/cgroup/\$c
      mountpoint -q /sys/fs/cgroup/\$c || mount -t cgroup -o \$c cgroup /sys/fs/cgroup/\$c
    done
    mkdir -p $SL/spool/th$i
    if [ -f $SL/slurmd.th$i.pid ] && kill -0 \$(cat $SL/slurmd.th$i.pid) 2>/dev/null; then exit 0; fi
    SLURM_CONF=$CONF setsid /usr/sbin/slurmd -N th$i </dev/null >>$SL/log/slurmd.th$i.out 2>&1" \
    || die "th$i: slurmd did not start; see $SL/log/slurmd.th$i.log"
}

wait_idle() {
  local states
  for _ in $(seq 150); do
    states="$(SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')"
    [ "$states" = "idle " ] && return 0
    sleep 0.2
  done
  die "nodes not idle after 30 s (sinfo: ${states:-nothing}); see $SL/log/"
}

write_inventory() {
  local inv="$STATE/inventory.yaml"
  grep -q '^backend:' "$inv" && return 0
  {
    echo "backend: slurm"
    echo "partition: debug"
    echo "slurm_conf: $CONF"
    cat "$inv"
  } >"$inv.tmp"
  mv -f "$inv.tmp" "$inv"
}

cmd_up() {
  local n=$1 i
  [ "$(id -u)" = 0 ] || die "the Slurm test cluster needs root"
  ensure_packages
  mkdir -p "$STATE"
  bash "$HOSTS" up "$n" --state "$STATE" --devices "$DEVICES" ${PYTHON:+--python "$PYTHON"} \
    >/dev/null
  paths
  [ "$COUNT" -gt 0 ] && [ -n "$PREFIX" ] || die "testhosts.sh wrote no state in $STATE"
  start_munge
  write_conf
  if ! alive_pidfile "$SL/slurmctld.pid" >/dev/null; then
    SLURM_CONF=$CONF /usr/sbin/slurmctld -i </dev/null >>"$SL/log/slurmctld.out" 2>&1 ||
      die "slurmctld did not start; see $SL/log/slurmctld.log"
  fi
  for ((i = 0; i < COUNT; i++)); do start_slurmd "$i"; done
  wait_idle
  write_inventory
  echo "$STATE/inventory.yaml"
}

kill_pidfile() {  # $1 pid file: TERM, wait, KILL
  local pid
  pid="$(alive_pidfile "$1")" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
  [ -d "$STATE" ] || return 0
  paths
  local f
  # slurmd lives in its host's PID namespace: its pid file holds that namespace's pid, so
  # it is stopped from inside the host; the host's teardown kills whatever is left.
  for ((i = 0; i < COUNT; i++)); do
    timeout 20 ssh -F "$STATE/ssh_config" "th$i" \
      "[ -f $SL/slurmd.th$i.pid ] && kill \$(cat $SL/slurmd.th$i.pid)" >/dev/null 2>&1 || true
  done
  kill_pidfile "$SL/slurmctld.pid"
  kill_pidfile "$SL/munge/munged.pid"
  bash "$HOSTS" down --state "$STATE" || true
  for f in "$SL"; do rm -rf "$f"; done
  rm -rf "$STATE"
}

[ $# -ge 1 ] || usage
CMD=$1; shift
STATE=/tmp/orchestrate-slurmhosts PYTHON="" DEVICES=2
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --state) STATE=${2:?--state needs a directory}; shift 2 ;;
    --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
    --devices) DEVICES=${2:?--devices needs a count}; shift 2 ;;
    -h|--help) usage ;;
    -*) die "unknown option $1" ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
case "$CMD" in
  up) [ ${#ARGS[@]} -eq 1 ] || usage; cmd_up "${ARGS[0]}" ;;
  down) [ ${#ARGS[@]} -eq 0 ] || usage; cmd_down ;;
  status) [ ${#ARGS[@]} -eq 0 ] || usage; paths; SLURM_CONF=$CONF sinfo -N ;;
  *) usage ;;
esac
