# Shared by the dsi sbatch templates (sourced, not run). Checks the allocation against what
# the job needs, builds the task layout and launches `dsi` through srun --mpi=pmix (default)
# or mpirun inside the allocation. cluster/slurm/README.md documents every variable.

dsi_log() { echo "[dsi-slurm $(date +%H:%M:%S)] $*"; }
dsi_die() { echo "dsi-slurm: error: $*" >&2; exit 2; }

# Paths: the repository (DSI_HOME, default the folder sbatch was called from) and the binary.
dsi_paths() {
  DSI_HOME=${DSI_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}
  DSI_BIN=${DSI_BIN:-$DSI_HOME/build/dsi}
  DSI_CONFIG=${DSI_CONFIG:-$DSI_HOME/configs/default.yaml}
  DSI_OUT=${DSI_OUT:-${SLURM_SUBMIT_DIR:-$PWD}}
  [ -x "$DSI_BIN" ] || dsi_die "dsi binary '$DSI_BIN' not found or not executable (build it, or set DSI_BIN)"
  [ -r "$DSI_CONFIG" ] || dsi_die "config '$DSI_CONFIG' not found (set DSI_CONFIG)"
  [ -d "$DSI_OUT" ] || dsi_die "output folder '$DSI_OUT' does not exist (set DSI_OUT)"
}

# Ranks a mode needs: coordinator + drafter (dsi, si) + targets (DSI_SP, or at least 1).
dsi_ranks_needed() {  # MODE [SP]   (tensor-parallel groups: DSI_TP, DSI_DRAFTER_TP ranks each)
  local mode=$1 sp=${2:-}
  local tp dtp fixed
  tp=$(dsi_tp) dtp=$(dsi_drafter_tp)
  case $mode in
    dsi|si) fixed=$((1 + dtp)) ;;
    nonsi) fixed=1 ;;
    *) dsi_die "DSI_MODE '$mode' must be dsi, si or nonsi" ;;
  esac
  if [ -n "$sp" ]; then
    [[ $sp =~ ^[0-9]+$ ]] && [ "$sp" -ge 1 ] || dsi_die "DSI_SP '$sp' must be a positive integer"
    echo $((fixed + sp * tp))
  else
    echo $((fixed + tp))
  fi
}

# Ranks per target (DSI_TP) and per drafter (DSI_DRAFTER_TP): tensor-parallel groups, 1 = none.
dsi_tp() {
  local tp=${DSI_TP:-1}
  [[ $tp =~ ^[0-9]+$ ]] && [ "$tp" -ge 1 ] || dsi_die "DSI_TP '$tp' must be a positive integer"
  echo "$tp"
}
dsi_drafter_tp() {
  local tp=${DSI_DRAFTER_TP:-1}
  [[ $tp =~ ^[0-9]+$ ]] && [ "$tp" -ge 1 ] || dsi_die "DSI_DRAFTER_TP '$tp' must be a positive integer"
  echo "$tp"
}
# The dsi arguments for them (none when both are 1).
dsi_tp_args() {
  local tp dtp
  tp=$(dsi_tp) dtp=$(dsi_drafter_tp)
  [ "$tp" -eq 1 ] || echo "--set roles.target_tp=$tp"
  [ "$dtp" -eq 1 ] || echo "--set roles.drafter_tp=$dtp"
}

# Refuses an allocation with fewer tasks than NEED (or not exactly NEED when EXACT=1).
dsi_check_tasks() {  # NEED WHAT [EXACT]
  local need=$1 what=$2 exact=${3:-0}
  local have=${SLURM_NTASKS:-}
  [ -n "$have" ] || dsi_die "SLURM_NTASKS is not set: submit with --ntasks (or --nodes and --ntasks-per-node)"
  if [ "$have" -lt "$need" ] || { [ "$exact" = 1 ] && [ "$have" -ne "$need" ]; }; then
    dsi_die "$what needs $([ "$exact" = 1 ] && echo exactly || echo at least) $need tasks (MPI ranks), but this job has SLURM_NTASKS=$have; resubmit with sbatch --ntasks=$need"
  fi
}

# Environment every rank inherits: NCCL (GPU data plane) and Open MPI. Defaults only: a value
# already exported by the user wins.
dsi_env() {
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  export NCCL_IB_DISABLE=${NCCL_IB_DISABLE:-0}
  [ -z "${NCCL_SOCKET_IFNAME:-}" ] || export NCCL_SOCKET_IFNAME
  # Ranks waiting for a message sleep in dsi's own back-off; keep Open MPI from spinning too.
  export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
  if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
}

# Writes a host file placing FIRST tasks on the allocation's first node and PER tasks on each
# other node (block order, so rank 0 is on the first node); prints its path.
dsi_hostfile() {  # FIRST PER
  local first=$1 per=$2 f="${DSI_OUT}/dsi-hosts-${SLURM_JOB_ID}.txt"
  local nodes
  mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  : >"$f"
  local i n
  for i in "${!nodes[@]}"; do
    n=$per
    [ "$i" -eq 0 ] && n=$first
    for ((j = 0; j < n; j++)); do echo "${nodes[$i]}" >>"$f"; done
  done
  echo "$f"
}

# Launches NP ranks of "$@" (each through bind_gpu.sh). With HOSTFILE set, tasks are placed
# as it lists them (srun -m arbitrary; mpirun --hostfile ... --map-by slot).
dsi_launch() {  # NP [HOSTFILE] -- CMD...
  local np=$1 hostfile=$2
  shift 3
  local bind="$DSI_HOME/cluster/slurm/bind_gpu.sh"
  local launcher=${DSI_LAUNCHER:-srun}
  dsi_log "launch: $np ranks via $launcher${hostfile:+ (placement $hostfile)}: $*"
  case $launcher in
    srun)
      if [ -n "$hostfile" ]; then
        SLURM_HOSTFILE=$hostfile srun --mpi=pmix -n "$np" -m arbitrary --kill-on-bad-exit=1 "$bind" "$@"
      else
        srun --mpi=pmix -n "$np" --kill-on-bad-exit=1 "$bind" "$@"
      fi ;;
    mpirun)
      local hf=()
      if [ -n "$hostfile" ]; then
        sort "$hostfile" | uniq -c | awk '{print $2" slots="$1}' >"$hostfile.mpi"
        # keep the first node first
        { grep "^$(head -1 "$hostfile") " "$hostfile.mpi"; grep -v "^$(head -1 "$hostfile") " "$hostfile.mpi"; } >"$hostfile.mpi2"
        hf=(--hostfile "$hostfile.mpi2" --map-by slot)
      fi
      mpirun -np "$np" "${hf[@]}" --mca btl "${DSI_MPI_BTL:-self,vader,tcp}" "$bind" "$@" ;;
    *) dsi_die "DSI_LAUNCHER '$launcher' must be srun or mpirun" ;;
  esac
}
