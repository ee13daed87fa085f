#!/usr/bin/env bash
# start_two_node_slurm.sh - a real two-node SLURM cluster on one Linux machine, for tests of multi-node jobs.
#
# Three network namespaces on one bridge act as three hosts, each with its own address and hostname:
#   hs2ctl  10.77.0.2    slurmctld
#   hs2n1   10.77.0.11   slurmd, node hs2n1
#   hs2n2   10.77.0.12   slurmd, node hs2n2
# The root namespace keeps 10.77.0.1 on the bridge and is the login node (sbatch / squeue / scontrol with
# SLURM_CONF=<dir>/slurm.conf). Each daemon runs under `unshare --uts` with the host's name as its hostname, and
# /etc/netns/<name>/hosts (which `ip netns exec` mounts over /etc/hosts) names all three, so a task on hs2n2 reaches
# a master address "hs2n1" the way it would on a cluster.
#
# What it models: separate network stacks and addresses (cross-node TCP: SLURM's own RPCs, srun's I/O, gloo),
# separate hostnames, a node that can die alone (its namespace's processes) and come back (run this script again:
# it restarts only what is down), a shared filesystem (the checkout, its .venv and the results are the same files
# on both nodes, as on a cluster's shared storage). What it does not: separate CPUs or memory (both nodes share this
# machine's cores: each declares all of them), GPUs, InfiniBand / NCCL, containers (pyxis / enroot), cgroups,
# accounting (sacct). It coexists with ../shared/slurm's single-node cluster: another slurm.conf, state directory,
# cluster name and controller address; both use the machine's munged.
#
# Debian's SLURM 22.05 (installed when missing). Idempotent. Run as root. Started and stopped only through PID files
# and `scontrol shutdown` (stop_two_node_slurm.sh), never by process name.
# Environment:
#   SLURM_TWO_NODE_DIR     state / spool / logs / pid files / slurm.conf (default ${TMPDIR:-/tmp}/nemo_hs2_slurm2)
#   SLURM_TWO_NODE_NET     the /24 prefix of the bridge                  (default 10.77.0)
#   SLURM_START_TIMEOUT    seconds to wait for both nodes                (default 90)
#   SLURM_CRED_EXPIRE      AuthInfo cred_expire = the delay before a requeued job starts again (default 10; SLURM 120)
#   SLURM_SCHED_INTERVAL   scheduler period, s                           (default 5; SLURM 60)
#   SLURM_SLURMD_TIMEOUT   seconds without an answer before a node is DOWN (default 20; SLURM 300)
#   SLURM_MIN_JOB_AGE      seconds a finished job stays in `scontrol show job` (default 3600)
#   SLURM_LOG_LEVEL        SlurmctldDebug / SlurmdDebug                  (default info; debug2 shows every RPC)
set -euo pipefail

T0=$(date +%s)
BASE=${SLURM_TWO_NODE_DIR:-${TMPDIR:-/tmp}/nemo_hs2_slurm2}
NET=${SLURM_TWO_NODE_NET:-10.77.0}
TIMEOUT=${SLURM_START_TIMEOUT:-90}
CONF=$BASE/slurm.conf
BRIDGE=hs2br0
CTL=hs2ctl
NODES=(hs2n1 hs2n2)
declare -A ADDR=([hs2ctl]=$NET.2 [hs2n1]=$NET.11 [hs2n2]=$NET.12)
export SLURM_CONF=$CONF

log() { echo "[start_two_node_slurm] $*"; }
die() { echo "[start_two_node_slurm] $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, daemons)"
for tool in ip unshare; do command -v "$tool" >/dev/null || die "$tool is missing (iproute2 / util-linux)"; done

# ---- 1. SLURM and munge (Debian packages; the same as ../shared/slurm/start_local_slurm.sh) -----------------------
need=0
for b in slurmctld slurmd sbatch srun scontrol munged munge; do command -v "$b" >/dev/null 2>&1 || need=1; done
if [ "$need" = 1 ]; then
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then  # keep the packages' postinst from starting services
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made_policy=1
  fi
  pkgs=(slurmctld slurmd slurm-client munge)
  apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null; apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; }
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  mungekey --create --keyfile=/etc/munge/munge.key --force 2>/dev/null \
    || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge; chmod 0755 /run/munge
mkdir -p "$BASE"/{state,spool,log,run}
# munged's socket is a file: the daemons in every namespace reach the one munged of the machine.
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged did not start"
  touch "$BASE/run/munged.ours"  # stop_two_node_slurm.sh stops munged only if this script started it
  log "munged started"
fi

# ---- 2. three hosts: network namespaces on a bridge ------------------------------------------------------------------
ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
ip addr replace "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up
hosts=$(printf '127.0.0.1 localhost\n'; for h in "$CTL" "${NODES[@]}"; do printf '%s %s\n' "${ADDR[$h]}" "$h"; done)
for h in "$CTL" "${NODES[@]}"; do
  ip netns list | awk '{print $1}' | grep -qx "$h" || ip netns add "$h"
  if ! ip netns exec "$h" ip link show eth0 >/dev/null 2>&1; then
    ip link del "v-$h" 2>/dev/null || true
    ip link add "v-$h" type veth peer name eth0 netns "$h"
  fi
  ip link set "v-$h" master "$BRIDGE" up
  ip netns exec "$h" ip addr replace "${ADDR[$h]}/24" dev eth0
  ip netns exec "$h" ip link set eth0 up
  ip netns exec "$h" ip link set lo up
  mkdir -p "/etc/netns/$h"
  printf '%s\n' "$hosts" > "/etc/netns/$h/hosts"
done

# ---- 3. slurm.conf -----------------------------------------------------------------------------------------------------
HW=$(slurmd -C 2>/dev/null | head -1 | tr ' ' '\n' \
     | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ' || true)
[ -n "$HW" ] || HW="CPUs=$(nproc) "
# Both nodes share the machine's memory: each declares half of it (a job's --mem then means something).
MEM=$(awk '/^MemTotal:/{print int($2 / 1024 / 2 * 0.9)}' /proc/meminfo)
new=$(mktemp)
cat > "$new" <<EOF
# generated by scripts/slurm/start_two_node_slurm.sh
ClusterName=hs2two
SlurmctldHost=$CTL(${ADDR[$CTL]})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=${SLURM_CRED_EXPIRE:-10}
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=${SLURM_LOG_LEVEL:-info}
SlurmdDebug=${SLURM_LOG_LEVEL:-info}
SlurmdTimeout=${SLURM_SLURMD_TIMEOUT:-20}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=${SLURM_SCHED_INTERVAL:-5},bf_interval=${SLURM_SCHED_INTERVAL:-5}
ReturnToService=2
JobRequeue=1
MailProg=/bin/true
MinJobAge=${SLURM_MIN_JOB_AGE:-3600}
NodeName=${NODES[0]} NodeAddr=${ADDR[${NODES[0]}]} ${HW}RealMemory=$MEM State=UNKNOWN
NodeName=${NODES[1]} NodeAddr=${ADDR[${NODES[1]}]} ${HW}RealMemory=$MEM State=UNKNOWN
PartitionName=two Nodes=${NODES[0]},${NODES[1]} Default=YES MaxTime=INFINITE State=UP
EOF

running() {  # alive and not a zombie
  [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}
alive() { [ -s "$1" ] && running "$(cat "$1")"; }
CTLD_PID=$BASE/run/slurmctld.pid
slurmd_pid() { echo "$BASE/run/slurmd-$1.pid"; }

if [ -f "$CONF" ] && cmp -s "$new" "$CONF"; then
  rm -f "$new"
else
  if alive "$CTLD_PID"; then
    log "slurm.conf changed; restarting the daemons"
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do
      busy=0
      for f in "$CTLD_PID" $(for n in "${NODES[@]}"; do slurmd_pid "$n"; done); do alive "$f" && busy=1; done
      [ "$busy" = 0 ] && break; sleep 0.1
    done
  fi
  mv "$new" "$CONF"; chmod 0644 "$CONF"
  log "wrote $CONF"
fi
# slurmd 22.05 loads a cgroup plugin even with proctrack/linuxproc and task/none, and autodetection fails in a
# namespace: `ip netns exec` mounts a fresh /sys without /sys/fs/cgroup. Named, the v1 plugin loads and, with
# those two plugins, is never used.
printf 'CgroupPlugin=cgroup/v1\n' > "$BASE/cgroup.conf"

# ---- 4. daemons, each in its host's namespace under its own hostname ------------------------------------------------
start_on() {  # host logfile daemon args...: the daemon in the host's network namespace, hostname = the host's
  local h=$1 logfile=$2; shift 2
  # shellcheck disable=SC2016  # $0 / $@ belong to the inner shell
  if ! ip netns exec "$h" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$h" "$@"; then
    tail -n 20 "$logfile" >&2 || true
    die "$1 did not start on $h (above: the end of $logfile)"
  fi
  log "$1 started on $h (${ADDR[$h]})"
}
if alive "$CTLD_PID"; then log "slurmctld already running (pid $(cat "$CTLD_PID"))"
else start_on "$CTL" "$BASE/log/slurmctld.log" slurmctld -f "$CONF"; fi
for n in "${NODES[@]}"; do
  if alive "$(slurmd_pid "$n")"; then log "slurmd $n already running (pid $(cat "$(slurmd_pid "$n")"))"
  else mkdir -p "$BASE/spool/$n"; start_on "$n" "$BASE/log/slurmd-$n.log" slurmd -f "$CONF" -N "$n"; fi
done

# ---- 5. wait until both nodes take jobs ---------------------------------------------------------------------------------
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null || true)
  ready=0
  for n in "${NODES[@]}"; do
    state=$(awk -v n="$n" '$1 == n {print $2}' <<<"$states" | head -1)
    case "$state" in
      idle|mixed|allocated|completing) ready=$((ready + 1)) ;;
      *drain*|down*) scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
    esac
  done
  [ "$ready" = "${#NODES[@]}" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "[start_two_node_slurm] nodes not ready after ${TIMEOUT}s:" >&2
    echo "$states" >&2
    tail -n 20 "$BASE/log/slurmctld.log" "$BASE"/log/slurmd-*.log >&2 || true
    exit 1
  fi
  sleep 0.5
done
log "nodes ${NODES[*]} ready after $(( $(date +%s) - T0 ))s; use: export SLURM_CONF=$CONF  (logs in $BASE/log)"
sinfo -N
