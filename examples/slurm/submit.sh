#!/usr/bin/env bash
# Plan, then submit: runs examples/plan.py on the same overrides (a config that breaks a rule or does not fit
# is refused here, on the login node), then sbatch's examples/slurm/train_rm.sbatch with the planned layout.
#
#   examples/slurm/submit.sh --image IMAGE --results DIR [options] [--] OVERRIDES...   # container mode
#   examples/slurm/submit.sh --host --results DIR [options] [--] OVERRIDES...          # host mode
#   examples/slurm/submit.sh --image /shared/nemo_hs2.sqsh --results /shared/results \
#       --mounts /shared/models:/models,/shared/data:/data \
#       +recipe=hs2_llama3_70b init.restore_from_path=/models/llama-3-70b.nemo \
#       data.train_file=/data/helpsteer2/train.jsonl.gz data.validation_file=/data/helpsteer2/validation.jsonl.gz
#
# Modes: container (pyxis / enroot: srun --container-image; the default when an image is given) or host (no
# containers: every task runs this checkout's .venv directly; the default when no image is given).
#
# Options (or the environment variable in brackets):
#   --image IMAGE        container image for srun --container-image [NEMO_HS2_IMAGE]
#   --host, --container  choose the mode explicitly [NEMO_HS2_MODE=host|container]
#   --results DIR        shared host directory for results and logs (container mode: mounted at /results)
#                        [NEMO_HS2_RESULTS]
#   --mounts LIST        more container mounts host:container[,...] (models, data, HF cache) [NEMO_HS2_MOUNTS]
#   --time [D-]HH:MM:SS  time limit of each job; the run is requeued until it finishes [04:00:00]
#   --signal-lead MIN    SIGUSR1 reaches training MIN minutes before the limit: it checkpoints at the next step
#                        and the job requeues itself [20]; allow a step, a validation and a checkpoint save
#   --stop-before MIN    also stop by the training timer (exp_manager.max_time_per_run = limit - MIN), for
#                        clusters that do not deliver --signal; the timer starts after the model load [off]
#   --account A, --partition P, --qos Q, --sbatch-arg ARG (repeatable): passed to sbatch
#   --dry-run            plan and print the sbatch command; submit nothing
# Planner options (plan.KEY=VALUE, e.g. plan.gpu_memory_gb=141 on H200) go to the planner and, as ++plan.KEY,
# to training, which applies the same checks at start-up.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=${NEMO_HS2_IMAGE:-}
results=${NEMO_HS2_RESULTS:-}
mounts=${NEMO_HS2_MOUNTS:-}
mode=${NEMO_HS2_MODE:-}
time_limit=04:00:00
signal_lead=20
stop_before=
dry_run=0
sbatch_args=()
overrides=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "submit: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --image) image=${2:?}; shift 2 ;;
    --image=*) image=${1#*=}; shift ;;
    --host) mode=host; shift ;;
    --container) mode=container; shift ;;
    --results) results=${2:?}; shift 2 ;;
    --results=*) results=${1#*=}; shift ;;
    --mounts) mounts=${2:?}; shift 2 ;;
    --mounts=*) mounts=${1#*=}; shift ;;
    --time) time_limit=${2:?}; shift 2 ;;
    --time=*) time_limit=${1#*=}; shift ;;
    --signal-lead) signal_lead=${2:?}; shift 2 ;;
    --signal-lead=*) signal_lead=${1#*=}; shift ;;
    --stop-before) stop_before=${2:?}; shift 2 ;;
    --stop-before=*) stop_before=${1#*=}; shift ;;
    --account|--partition|--qos) sbatch_args+=("$1=${2:?}"); shift 2 ;;
    --account=*|--partition=*|--qos=*) sbatch_args+=("$1"); shift ;;
    --sbatch-arg) sbatch_args+=("${2:?}"); shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; overrides+=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) overrides+=("$1"); shift ;;
  esac
done
if [ -z "$mode" ]; then if [ -n "$image" ]; then mode=container; else mode=host; fi; fi
case "$mode" in
  container) [ -n "$image" ] || die "container mode needs --image (or NEMO_HS2_IMAGE); --host runs without one" ;;
  host) [ -z "$image" ] || echo "submit: host mode: --image $image is not used" >&2 ;;
  *) die "NEMO_HS2_MODE must be host or container, got '$mode'" ;;
esac
[ -n "$results" ] || die "--results (or NEMO_HS2_RESULTS) is required"
case "$results" in /*) ;; *) die "--results must be an absolute path on shared storage" ;; esac

# [D-]HH:MM:SS -> seconds
to_seconds() {
  local t=$1 days=0 h m s
  if [[ $t == *-* ]]; then days=${t%%-*}; t=${t#*-}; fi
  IFS=: read -r h m s <<<"$t"
  [[ $days =~ ^[0-9]+$ && $h =~ ^[0-9]+$ && $m =~ ^[0-9]+$ && $s =~ ^[0-9]+$ ]] \
    || die "--time must be [D-]HH:MM:SS, got $1"
  echo $(( ((10#$days * 24 + 10#$h) * 60 + 10#$m) * 60 + 10#$s ))
}
limit_s=$(to_seconds "$time_limit")
[[ $signal_lead =~ ^[0-9]+$ ]] || die "--signal-lead takes minutes"
[ $(( limit_s - signal_lead * 60 )) -ge 600 ] || die "--time $time_limit leaves under 10 minutes before the signal"
max_time=
if [ -n "$stop_before" ]; then
  [[ $stop_before =~ ^[0-9]+$ ]] || die "--stop-before takes minutes"
  budget_s=$(( limit_s - stop_before * 60 ))
  [ "$budget_s" -ge 600 ] || die "--time $time_limit leaves under 10 minutes of training after --stop-before"
  max_time=$(printf '%02d:%02d:%02d:%02d' $((budget_s / 86400)) $((budget_s % 86400 / 3600)) \
    $((budget_s % 3600 / 60)) $((budget_s % 60)))
fi

python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

# Planner first. plan.* options go to it as given; training gets them as ++plan.* (they are not in its config).
train_overrides=()
for o in "${overrides[@]}"; do
  bare=${o#++}; bare=${bare#+}
  case "$bare" in
    plan.format=*|plan.json_out=*|plan.strict=*) ;;
    plan.*=*) train_overrides+=("++$bare") ;;
    *) train_overrides+=("$o") ;;
  esac
done
plan_json=$(mktemp)
trap 'rm -f "$plan_json"' EXIT
set +e
"$python" "$repo/examples/plan.py" "${overrides[@]}" plan.strict=true "plan.json_out=$plan_json"
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  echo "submit: the planner refused this config (above); nothing was submitted" >&2
  exit "$rc"
fi

read -r name nodes gpus tp pp accelerator < <("$python" - "$plan_json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
L = p["layout"]
print(p["run"]["name"], L["nodes"], L["gpus_per_node"], L["tp"], L["pp"], L["accelerator"])
PY
)
# A CPU layout is a host-mode test run (the demo over gloo); the container image is for GPU nodes.
[ "$accelerator" = gpu ] || [ "$mode" = host ] \
  || die "trainer.accelerator=$accelerator: use trainer=gpu or a +recipe=... (or --host for a CPU run)"

has_override() { local o; for o in "${overrides[@]}"; do case "${o#+}" in "$1"=*|"+$1"=*) return 0 ;; esac; done; return 1; }
train_overrides+=("trainer.num_nodes=$nodes" "trainer.devices=$gpus"
                  "model.tensor_model_parallel_size=$tp" "model.pipeline_model_parallel_size=$pp")
run_root=/results
[ "$mode" = host ] && run_root=$results
has_override exp_manager.explicit_log_dir || train_overrides+=("exp_manager.explicit_log_dir=$run_root/$name")
if [ -n "$max_time" ] && ! has_override exp_manager.max_time_per_run; then
  train_overrides+=("exp_manager.max_time_per_run=$max_time")
fi

log_dir="$results/$name"
# SLURM's output and the plan go to a subdirectory: NeMo's exp_manager moves every plain file of the run directory
# into run_N/ each time training starts, which would split an appended output file across restarts.
slurm_dir="$log_dir/slurm"
gpu_args=()
[ "$accelerator" = gpu ] && gpu_args=(--gpus-per-node="$gpus")
cmd=(sbatch --nodes="$nodes" --ntasks-per-node="$gpus" "${gpu_args[@]}" --time="$time_limit"
     --job-name="$name" --dependency=singleton --output="$slurm_dir/slurm-%j.out" --open-mode=append
     --requeue --signal="USR1@$((signal_lead * 60))" --export=ALL "${sbatch_args[@]}"
     "$here/train_rm.sbatch" "${train_overrides[@]}")

export NEMO_HS2_MODE="$mode" NEMO_HS2_IMAGE="$image" NEMO_HS2_RESULTS="$results" NEMO_HS2_MOUNTS="$mounts" \
  NEMO_HS2_RUN="$name" NEMO_HS2_REPO="$repo"
echo
echo "submit: $mode mode, $nodes node(s) x $gpus $accelerator task(s), TP $tp x PP $pp, results $log_dir"
if [ "$dry_run" = 1 ]; then
  printf 'NEMO_HS2_MODE=%q NEMO_HS2_IMAGE=%q NEMO_HS2_RESULTS=%q NEMO_HS2_MOUNTS=%q NEMO_HS2_RUN=%q NEMO_HS2_REPO=%q \\\n  ' \
    "$mode" "$image" "$results" "$mounts" "$name" "$repo"
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
mkdir -p "$slurm_dir"
cp "$plan_json" "$slurm_dir/plan.json"
out=$("${cmd[@]}")
echo "$out"
job=${out##* }
echo "submit: watch   tail -f $slurm_dir/slurm-$job.out    squeue -j $job    (plan: $slurm_dir/plan.json)"
