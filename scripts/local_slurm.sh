#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests and CI (no systemd needed).
#
#   scripts/local_slurm.sh start    # idempotent: config, munge key, daemons, wait for an idle node
#   scripts/local_slurm.sh stop     # stop slurmd, slurmctld and munged (by their pid files)
#   scripts/local_slurm.sh status   # sinfo + daemon pids
#
# Needs the Debian packages `slurmctld slurmd slurm-client munge` (CI:
# `apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge`) and root
# (or password-less sudo). The node is this host (`hostname -s`) with its real CPU count and
# memory (from `slurmd -C`), in one default partition `debug`. `AuthInfo=cred_expire=10` lets a
# requeued job start again after ~10 s instead of the default 120 s.
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
SLURMD_PID="$RUN_DIR/slurmd.pid"
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
}

render_conf() {
  local host
  host=$(hostname -s)
  cat <<EOF
# Written by scripts/local_slurm.sh: a one-node test cluster.
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
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$(node_line)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

prepare_dirs() {
  as_root mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd "$RUN_DIR" /var/log/slurm /run/munge
  as_root chown slurm:slurm /var/spool/slurmctld /var/spool/slurmd "$RUN_DIR" /var/log/slurm
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
  if ! pid_alive "$SLURMD_PID"; then
    log "starting slurmd"
    as_root slurmd -f "$CONF" || die "slurmd failed; see /var/log/slurm/slurmd.log"
  fi
}

wait_idle() {
  local host state deadline=$((SECONDS + WAIT_S))
  host=$(hostname -s)
  while ((SECONDS < deadline)); do
    state=$(SLURM_CONF="$CONF" sinfo -h -N -n "$host" -o "%t" 2>/dev/null | head -n1 || true)
    case "$state" in
      idle|mix|alloc) log "node $host is $state"; return 0 ;;
      down*|drain*|drng*) SLURM_CONF="$CONF" as_root scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
  done
  SLURM_CONF="$CONF" sinfo -N -l >&2 || true
  as_root tail -n 20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  die "node $host not idle after ${WAIT_S}s"
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
  stop_pidfile slurmd "$SLURMD_PID"
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
  status) SLURM_CONF="$CONF" sinfo -N -l || true; for f in "$MUNGE_PID" "$CTLD_PID" "$SLURMD_PID"; do
            pid_alive "$f" && echo "$f: $(cat "$f") running" || echo "$f: not running"; done ;;
  *) echo "usage: $0 {start|stop|status}" >&2; exit 2 ;;
esac
