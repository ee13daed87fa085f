#!/usr/bin/env bash
# stop_two_node_slurm.sh - stop the cluster of start_two_node_slurm.sh and remove its hosts.
# Cancels its jobs (SLURM_STOP_KEEP_JOBS=1 skips that), `scontrol shutdown`, then SIGTERM / SIGKILL by PID file;
# whatever still runs inside the cluster's own network namespaces (a task a lost node left behind) is killed by the
# namespace's PID list, then the namespaces, the bridge and /etc/netns/<host> go. munged is stopped only if
# start_two_node_slurm.sh started it. Nothing is killed by process name. Environment: SLURM_TWO_NODE_DIR.
set -uo pipefail

BASE=${SLURM_TWO_NODE_DIR:-${TMPDIR:-/tmp}/nemo_hs2_slurm2}
export SLURM_CONF=$BASE/slurm.conf
HOSTS=(hs2ctl hs2n1 hs2n2)
BRIDGE=hs2br0
log() { echo "[stop_two_node_slurm] $*"; }
running() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
alive() { [ -s "$1" ] && running "$(cat "$1")"; }
wait_gone() {  # pidfile seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do alive "$1" || return 0; sleep 0.1; done
  return 1
}
pidfiles=("$BASE/run/slurmctld.pid" "$BASE"/run/slurmd-*.pid)

if [ -f "$SLURM_CONF" ] && alive "$BASE/run/slurmctld.pid"; then
  if [ "${SLURM_STOP_KEEP_JOBS:-0}" != 1 ]; then
    jobs=$(squeue -h -o '%i' 2>/dev/null | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
      log "cancelling jobs: $jobs"
      # shellcheck disable=SC2086  # one argument per job id
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 1 60); do [ -z "$(squeue -h -o '%i' 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  scontrol shutdown >/dev/null 2>&1 && log "scontrol shutdown sent"
fi
for f in "${pidfiles[@]}"; do
  alive "$f" || continue
  wait_gone "$f" 10 && continue
  pid=$(cat "$f"); log "pid $pid ($f) still alive: SIGTERM"; kill -TERM "$pid" 2>/dev/null
  wait_gone "$f" 10 || { log "pid $pid: SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
done
rm -f "$BASE/run/slurmctld.pid" "$BASE"/run/slurmd-*.pid

for h in "${HOSTS[@]}"; do
  ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$h" || continue
  left=$(ip netns pids "$h" 2>/dev/null | tr '\n' ' ')
  if [ -n "${left// /}" ]; then
    log "$h: still running, killed: $left"
    # shellcheck disable=SC2086  # one argument per pid
    kill -KILL $left 2>/dev/null
    sleep 0.2
  fi
  ip netns del "$h" && rm -rf "/etc/netns/$h"
done
ip link del "$BRIDGE" 2>/dev/null || true

if [ -e "$BASE/run/munged.ours" ] && alive /run/munge/munged.pid; then
  pid=$(cat /run/munge/munged.pid); kill -TERM "$pid"
  for _ in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
  log "munged ($pid) stopped"
fi
rm -f "$BASE/run/munged.ours"
log "done"
