#!/usr/bin/env bash
# A real local Slurm cluster on this machine, for tests and CI (no systemd needed).
#
#   scripts/local_slurm.sh start    # idempotent: config, munge key, daemons, wait for an idle node
#   scripts/local_slurm.sh stop     # stop slurmd, slurmctld and munged (by their pid files)
#   scripts/local_slurm.sh status   # sinfo + daemon pids
#
# Needs the Debian packages `slurmctld slurmd slurm-client munge` (CI:
# `apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge`) and root
# (or password-less sudo). Partition `debug` (default) is this host (`hostname -s`) with its real
# CPU count and memory (from `slurmd -C`). Partition `multinode` holds two more nodes,
# `vosr-n1` and `vosr-n2` (1 CPU each), served by two more slurmd daemons on this host
# (`slurmd -N`, own port, NodeAddr=127.0.0.1): a job there really spans two Slurm nodes, so
# the multi-node paths (srun across nodes, SLURM_NODEID, the rendezvous through the first
# node's NodeAddr) run for real. `AuthInfo=cred_expire=10` lets a requeued job start again
# after ~10 s instead of the default 120 s.
#
# Environment knobs:
#   SLURM_CONF_DIR   where slurm.conf is written (default /etc/slurm)
#   SLURM_WAIT_S     how long `start` waits for the node to become idle (default 60)
#
# Short scheduler intervals (sched_interval=2, bf_interval=1) start a requeued job as soon as its
# credential expired, instead of at the next 60-s main scheduling pass.
set -euo pipefail

CONF_DIR="${SLURM_CONF_DIR:-/etc/slurm}"
CONF="$CONF_DIR/slurm.conf"
WAIT_S="${SLURM_WAIT_S:-60}"
RUN_DIR=/run/slurm
CTLD_PID="$RUN_DIR/slurmctld.pid"
VIRTUAL_NODES=(vosr-n1 vosr-n2)
VIRTUAL_PORT0=17001  # vosr-n1 listens on 17001, vosr-n2 on 17002 (the host's slurmd on 6818)
slurmd_pidfile() { echo "$RUN_DIR/slurmd-$1.pid"; }  # matches SlurmdPidFile=.../slurmd-%n.pid
MUNGE_PID=/run/munge/munged.pid

log() { echo "[local_slurm] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else die "needs root or password-less sudo to run: $*"
  fi
}

pid_alive() {  # pid_alive PIDFILE
  [[ -s "$1" ]] && as_root kill -0 "$(cat "$1")" 2>/dev/null
}

check_binaries() {
  local missing=()
  for bin in slurmctld slurmd sbatch srun sinfo scontrol munged munge; do
    command -v "$bin" >/dev/null || [[ -x "/usr/sbin/$bin" ]] || missing+=("$bin")
  done
  if ((${#missing[@]})); then
    die "missing ${missing[*]}; install: apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
  fi
}

node_line() {  # NodeName=<host> CPUs=... RealMemory=... as slurmd itself detects them
  local line
  line=$(as_root slurmd -C 2>/dev/null | head -n1 || true)
  if [[ "$line" != NodeName=* ]]; then
    local mem_mb
    mem_mb=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    line="NodeName=$(hostname -s) CPUs=$(nproc) RealMemory=$mem_mb"
  fi
  echo "$line State=UNKNOWN"
  local i mem_mb
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 / 4)}' /proc/meminfo)
  for i in "${!VIRTUAL_NODES[@]}"; do
    echo "NodeName=${VIRTUAL_NODES[$i]} NodeHostname=$(hostname -s) NodeAddr=127.0.0.1" \
         "Port=$((VIRTUAL_PORT0 + i)) CPUs=1 RealMemory=$mem_mb State=UNKNOWN"
  done
}

render_conf() {
  local host
  host=$(hostname -s)
  cat <<EOF
# Written by scripts/local_slurm.sh: a local test cluster (this host + two virtual nodes).
ClusterName=vosr-local
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
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
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
$(node_line)
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=multinode Nodes=$(IFS=,; echo "${VIRTUAL_NODES[*]}") MaxTime=INFINITE State=UP
EOF
}

prepare_dirs() {
  local node spools=()
  for node in "$(hostname -s)" "${VIRTUAL_NODES[@]}"; do spools+=("/var/spool/slurmd/$node"); done
  as_root mkdir -p "$CONF_DIR" /var/spool/slurmctld "${spools[@]}" "$RUN_DIR" /var/log/slurm /run/munge
  as_root chown slurm:slurm /var/spool/slurmctld "$RUN_DIR" /var/log/slurm
  as_root chown munge:munge /run/munge
  as_root chmod 0755 /run/munge
}

start_munge() {
  if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    as_root mkdir -p /etc/munge
    as_root dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    as_root chown munge:munge /etc/munge/munge.key
    as_root chmod 0400 /etc/munge/munge.key
  fi
  if pid_alive "$MUNGE_PID" && munge -n </dev/null | unmunge >/dev/null 2>&1; then
    return
  fi
  log "starting munged"
  as_root runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do
    munge -n </dev/null | unmunge >/dev/null 2>&1 && return
    sleep 0.1
  done
  die "munged does not answer (munge -n | unmunge)"
}

start_daemons() {  # start_daemons RESTART(0/1)
  if [[ "$1" == 1 ]]; then stop_slurm; fi
  if ! pid_alive "$CTLD_PID"; then
    log "starting slurmctld"
    as_root slurmctld -f "$CONF" || die "slurmctld failed; see /var/log/slurm/slurmctld.log"
  fi
  local node
  for node in "$(hostname -s)" "${VIRTUAL_NODES[@]}"; do
    if ! pid_alive "$(slurmd_pidfile "$node")"; then
      log "starting slurmd for node $node"
      as_root slurmd -f "$CONF" -N "$node" || die "slurmd -N $node failed; see /var/log/slurm/slurmd-$node.log"
    fi
  done
}

wait_idle() {  # every node idle (or busy with a job)
  local node state deadline=$((SECONDS + WAIT_S)) waiting=()
  while ((SECONDS < deadline)); do
    waiting=()
    for node in "$(hostname -s)" "${VIRTUAL_NODES[@]}"; do
      state=$(SLURM_CONF="$CONF" sinfo -h -N -n "$node" -o "%t" 2>/dev/null | head -n1 || true)
      case "$state" in
        idle|mix|alloc) ;;
        down*|drain*|drng*) waiting+=("$node")
          SLURM_CONF="$CONF" as_root scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        *) waiting+=("$node") ;;
      esac
    done
    if ((${#waiting[@]} == 0)); then log "nodes $(hostname -s) ${VIRTUAL_NODES[*]} are up"; return 0; fi
    sleep 0.5
  done
  SLURM_CONF="$CONF" sinfo -N -l >&2 || true
  as_root tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-*.log >&2 || true
  die "nodes ${waiting[*]} not idle after ${WAIT_S}s"
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE
  if pid_alive "$2"; then
    local pid
    pid=$(cat "$2")
    log "stopping $1 ($pid)"
    as_root kill "$pid"
    for _ in $(seq 100); do as_root kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    as_root kill -9 "$pid" 2>/dev/null || true
  fi
}

stop_slurm() {
  local pidfile
  # every slurmd, including one started under an older config's single $RUN_DIR/slurmd.pid
  for pidfile in "$RUN_DIR"/slurmd*.pid; do stop_pidfile slurmd "$pidfile"; done
  stop_pidfile slurmctld "$CTLD_PID"
}

cmd_start() {
  check_binaries
  prepare_dirs
  local tmp restart=0
  tmp=$(mktemp)
  render_conf >"$tmp"
  if ! as_root cmp -s "$tmp" "$CONF"; then
    log "writing $CONF"
    as_root install -m 0644 "$tmp" "$CONF"
    restart=1  # AuthInfo and node changes need a daemon restart, not `scontrol reconfigure`
  fi
  rm -f "$tmp"
  start_munge
  start_daemons "$restart"
  wait_idle
}

cmd_stop() {
  stop_slurm
  stop_pidfile munged "$MUNGE_PID"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) SLURM_CONF="$CONF" sinfo -N -l || true; for f in "$MUNGE_PID" "$CTLD_PID" "$RUN_DIR"/slurmd*.pid; do
            pid_alive "$f" && echo "$f: $(cat "$f") running" || echo "$f: not running"; done ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
