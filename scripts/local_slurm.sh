#!/usr/bin/env bash
# A private Slurm cluster on this machine, for tests and CI: everything under one folder, nothing in /etc.
#
#   scripts/local_slurm.sh start PREFIX    # idempotent: config, munge key, daemons, wait until the nodes are up
#   scripts/local_slurm.sh stop PREFIX     # stop slurmd, slurmctld and munged by the pids in PREFIX/run
#   scripts/local_slurm.sh status PREFIX   # sinfo + daemon pids
#   export SLURM_CONF=PREFIX/etc/slurm.conf  # what every Slurm command (and job) must see to use this cluster
#
# PREFIX (default: $VOSR_SLURM_PREFIX, else ${TMPDIR:-/tmp}/vosr-slurm-$(id -un)) holds
#   etc/slurm.conf      the configuration (clients find it through SLURM_CONF)
#   munge/              the cluster's own munge key, socket, pid, seed and log (a private munged)
#   state/ spool/       slurmctld's state and each slurmd's spool
#   run/ log/           pid files and logs of slurmctld and the slurmd daemons
# so a system Slurm (its /etc/slurm, /etc/munge, /run/munge, daemons on ports 6817/6818) is neither
# read, written nor used. The daemons listen on four free ports from SLURM_PORT_BASE (default: the
# first free block from 16817). munged and slurmctld run as the invoking user; slurmd, which starts
# jobs, needs root (or password-less sudo).
#
# Partition `debug` (default) is this host (`hostname -s`) with its real CPU count and memory (from
# `slurmd -C`). Partition `multinode` holds two more nodes, `vosr-n1` and `vosr-n2` (1 CPU each),
# served by two more slurmd daemons on this host (`slurmd -N`, own port, NodeAddr=127.0.0.1): a job
# there really spans two Slurm nodes, so the multi-node paths (srun across nodes, SLURM_NODEID, the
# rendezvous through the first node's NodeAddr) run for real. `AuthInfo=...,cred_expire=10` lets a
# requeued job start again after ~10 s instead of 120 s; short scheduler intervals (sched_interval=2,
# bf_interval=1) start it as soon as its credential expired.
#
# Needs the Debian packages `slurmctld slurmd slurm-client munge` (scripts/setup.sh installs them).
# Environment: SLURM_WAIT_S, how long `start` waits for the nodes (default 300; it says what it waits for).
set -euo pipefail

CMD="${1:-}"
PREFIX="${2:-${VOSR_SLURM_PREFIX:-${TMPDIR:-/tmp}/vosr-slurm-$(id -un)}}"
WAIT_S="${SLURM_WAIT_S:-300}"
HOST=$(hostname -s)
VIRTUAL_NODES=(vosr-n1 vosr-n2)
NODES=("$HOST" "${VIRTUAL_NODES[@]}")

log() { echo "[local_slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

set_paths() {
  mkdir -p "$PREFIX"
  PREFIX=$(cd "$PREFIX" && pwd -P)
  CONF="$PREFIX/etc/slurm.conf"
  RUN="$PREFIX/run"
  LOGS="$PREFIX/log"
  MUNGE_DIR="$PREFIX/munge"
  MUNGE_SOCKET="$MUNGE_DIR/munge.socket"
  MUNGE_PID="$RUN/munged.pid"
  CTLD_PID="$RUN/slurmctld.pid"
  export SLURM_CONF="$CONF"
  # munged and Slurm keep socket paths in sockaddr_un (108 bytes)
  ((${#MUNGE_SOCKET} < 100)) || die "prefix $PREFIX is too long for a socket path; use a shorter one"
}

slurmd_pidfile() { echo "$RUN/slurmd-$1.pid"; }  # matches SlurmdPidFile=$RUN/slurmd-%n.pid

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else die "slurmd needs root or password-less sudo to run: $*"
  fi
}

pid_alive() {  # pid_alive PIDFILE
  [[ -s "$1" ]] && as_root kill -0 "$(cat "$1")" 2>/dev/null
}

check_binaries() {
  local bin missing=()
  for bin in slurmctld slurmd sbatch srun sinfo scontrol munged munge unmunge; do
    command -v "$bin" >/dev/null || [[ -x "/usr/sbin/$bin" ]] || missing+=("$bin")
  done
  if ((${#missing[@]})); then
    die "missing ${missing[*]}; install: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
  fi
}

port_free() {  # nothing accepts connections on 127.0.0.1:PORT
  ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port_base() {  # four consecutive free ports: slurmctld, this host's slurmd, vosr-n1, vosr-n2
  local base="${SLURM_PORT_BASE:-16817}" tries=0 p ok
  while ((tries < 200)); do
    ok=1
    for p in 0 1 2 3; do port_free $((base + p)) || { ok=0; break; }; done
    if ((ok)); then echo "$base"; return; fi
    [[ -n "${SLURM_PORT_BASE:-}" ]] && die "SLURM_PORT_BASE=$SLURM_PORT_BASE: ports $base-$((base + 3)) are not all free"
    base=$((base + 10)); tries=$((tries + 1))
  done
  die "no four free ports found from 16817; set SLURM_PORT_BASE"
}

node_lines() {  # this host as slurmd itself detects it, then the two virtual nodes
  local base=$1 line mem_mb i
  line=$(as_root env SLURM_CONF="$CONF" slurmd -C 2>/dev/null | head -n1 || true)
  if [[ "$line" != NodeName=* ]]; then
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    line="NodeName=$HOST CPUs=$(nproc) RealMemory=$mem_mb"
  fi
  echo "$line Port=$((base + 1)) State=UNKNOWN"
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 4)}' /proc/meminfo)
  for i in "${!VIRTUAL_NODES[@]}"; do
    echo "NodeName=${VIRTUAL_NODES[$i]} NodeHostname=$HOST NodeAddr=127.0.0.1" \
         "Port=$((base + 2 + i)) CPUs=1 RealMemory=$mem_mb State=UNKNOWN"
  done
}

render_conf() {  # render_conf PORT_BASE
  cat <<EOF
# Written by scripts/local_slurm.sh: a private test cluster under $PREFIX (this host + two virtual nodes).
ClusterName=vosr-test
SlurmctldHost=$HOST
SlurmctldPort=$1
SlurmdPort=$(($1 + 1))
SlurmUser=$(id -un)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
PlugStackConfig=$PREFIX/etc/plugstack.conf
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
ReturnToService=2
KillWait=10
MinJobAge=600
MailProg=/bin/true
StateSaveLocation=$PREFIX/state
SlurmdSpoolDir=$PREFIX/spool/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
$(node_lines "$1")
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=multinode Nodes=$(IFS=,; echo "${VIRTUAL_NODES[*]}") MaxTime=INFINITE State=UP
EOF
}

munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
  mkdir -p "$MUNGE_DIR"
  chmod 0700 "$MUNGE_DIR"
  if [[ ! -s "$MUNGE_DIR/munge.key" ]]; then
    log "creating the cluster's munge key $MUNGE_DIR/munge.key"
    (umask 077; dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1 count=1024 status=none)
  fi
  if pid_alive "$MUNGE_PID" && munge_ok; then return; fi
  log "starting munged (socket $MUNGE_SOCKET)"
  munged --force --socket="$MUNGE_SOCKET" --key-file="$MUNGE_DIR/munge.key" --pid-file="$MUNGE_PID" \
    --log-file="$MUNGE_DIR/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
    || die "munged failed; see $MUNGE_DIR/munged.log"
  for _ in $(seq 100); do munge_ok && return; sleep 0.1; done
  die "munged does not answer on $MUNGE_SOCKET (see $MUNGE_DIR/munged.log)"
}

start_daemons() {
  if ! pid_alive "$CTLD_PID"; then
    log "starting slurmctld"
    slurmctld -f "$CONF" || die "slurmctld failed; see $LOGS/slurmctld.log"
  fi
  local node
  for node in "${NODES[@]}"; do
    if ! pid_alive "$(slurmd_pidfile "$node")"; then
      log "starting slurmd for node $node"
      as_root slurmd -f "$CONF" -N "$node" || die "slurmd -N $node failed; see $LOGS/slurmd-$node.log"
    fi
  done
}

wait_idle() {  # every node idle (or busy with a job)
  local node state deadline=$((SECONDS + WAIT_S)) waiting=()
  log "waiting up to ${WAIT_S}s for nodes ${NODES[*]} to register with slurmctld"
  while ((SECONDS < deadline)); do
    waiting=()
    for node in "${NODES[@]}"; do
      state=$(sinfo -h -N -n "$node" -o "%t" 2>/dev/null | head -n1 || true)
      case "$state" in
        idle|mix|alloc) ;;
        down*|drain*|drng*) waiting+=("$node")
          scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        *) waiting+=("$node") ;;
      esac
    done
    if ((${#waiting[@]} == 0)); then log "nodes ${NODES[*]} are up (SLURM_CONF=$CONF)"; return 0; fi
    sleep 0.5
  done
  sinfo -N -l >&2 || true
  tail -n 20 "$LOGS"/*.log >&2 || true
  die "nodes ${waiting[*]} did not become idle within ${WAIT_S}s (waiting for them to register with slurmctld)"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: TERM, then KILL after 10 s
  if pid_alive "$2"; then
    local pid
    pid=$(cat "$2")
    log "stopping $1 ($pid)"
    as_root kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do as_root kill -0 "$pid" 2>/dev/null || { rm -f "$2"; return 0; }; sleep 0.1; done
    as_root kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$2"
}

cmd_start() {
  check_binaries
  mkdir -p "$PREFIX"/{etc,state,run,log} "${NODES[@]/#/$PREFIX/spool/}"
  if ! pid_alive "$CTLD_PID"; then  # a fresh (or dead) cluster: new ports, new config
    log "writing $CONF"
    render_conf "$(pick_port_base)" >"$CONF"
    : >"$PREFIX/etc/plugstack.conf"
  fi
  start_munge
  start_daemons
  wait_idle
}

cmd_stop() {
  local node
  for node in "${NODES[@]}"; do stop_pidfile "slurmd $node" "$(slurmd_pidfile "$node")"; done
  stop_pidfile slurmctld "$CTLD_PID"
  stop_pidfile munged "$MUNGE_PID"
}

cmd_status() {
  sinfo -N -l || true
  local f
  for f in "$MUNGE_PID" "$CTLD_PID" "$RUN"/slurmd-*.pid; do
    if pid_alive "$f"; then echo "$f: $(cat "$f") running"; else echo "$f: not running"; fi
  done
}

case "$CMD" in
  start) set_paths; cmd_start ;;
  stop) set_paths; cmd_stop ;;
  status) set_paths; cmd_status ;;
  *) echo "usage: $0 {start|stop|status} [PREFIX]" >&2; exit 2 ;;
esac
