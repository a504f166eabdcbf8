# A throw-away one-node Slurm cluster in a temp folder (sourced by slurm_test.sh): munged as
# user munge with Debian's key, slurmctld -D and slurmd -D in the background, every path and
# port private to this run, SLURM_CONF exported. slurm_cluster_stop cancels the jobs and
# stops the three daemons by their PIDs. Each daemon runs under `timeout` (its PID is the one
# kept; timeout passes TERM on), so even a test killed with SIGKILL leaves no daemon behind
# for longer than SC_LIFETIME_S (default 540 s, under the ctest TIMEOUT). Needs root (slurmd launches jobs) and the packages
# slurmctld slurmd slurm-client munge (launch/setup.sh installs them).

slurm_cluster_start() {  # DIR
  local dir=$1
  SC_DIR=$dir
  SC_PIDS=()
  SC_HOST=$(hostname -s)
  mkdir -p "$dir"/{etc,state,spool,log,munge}
  chmod 755 "$dir"
  chown munge:munge "$dir/munge"
  chmod 755 "$dir/munge"  # the socket must be reachable by everyone
  local ports
  ports=($(python3 -c 'import socket
ss = [socket.socket() for _ in range(2)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])'))
  cat >"$dir/etc/slurm.conf" <<CONF
ClusterName=dsitest
SlurmctldHost=$SC_HOST(127.0.0.1)
SlurmctldPort=${ports[0]}
SlurmdPort=${ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
SchedulerParameters=sched_min_interval=0,batch_sched_delay=0
SlurmdParameters=config_overrides
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
FirstJobId=$((1000 + RANDOM % 50000 * 10))
InactiveLimit=0
KillWait=5
MinJobAge=600
NodeName=$SC_HOST NodeAddr=127.0.0.1 CPUs=16 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=$SC_HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
  # PMIx's per-step folders go here too, so that two clusters on one machine cannot collide.
  mkdir -p "$dir/pmix"
  echo "PMIxCliTmpDirBase=$dir/pmix" >"$dir/etc/mpi.conf"
  export SLURM_CONF=$dir/etc/slurm.conf
  local life=(timeout --kill-after=5 "${SC_LIFETIME_S:-540}")
  # setpriv execs munged in place (as user munge).
  "${life[@]}" setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F --socket="$dir/munge/munge.socket" \
    --key-file=/etc/munge/munge.key --pid-file="$dir/munge/munged.pid" \
    --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/munged.seed" \
    2>"$dir/log/munged.stderr" &
  SC_PIDS+=($!)
  local i
  for i in $(seq 50); do [ -S "$dir/munge/munge.socket" ] && break; sleep 0.1; done
  [ -S "$dir/munge/munge.socket" ] || { echo "munged did not start:"; cat "$dir/log/munged.stderr"; return 1; }
  "${life[@]}" /usr/sbin/slurmctld -D -i -f "$SLURM_CONF" >"$dir/log/slurmctld.stdout" 2>&1 &
  SC_PIDS+=($!)
  "${life[@]}" /usr/sbin/slurmd -D -f "$SLURM_CONF" -N "$SC_HOST" >"$dir/log/slurmd.stdout" 2>&1 &
  SC_PIDS+=($!)
  echo "slurm: munged, slurmctld, slurmd started (PIDs ${SC_PIDS[*]}), ports ${ports[*]}, conf $SLURM_CONF"
  local state=""
  for i in $(seq 150); do
    state=$(sinfo -h -o %T 2>/dev/null | head -1)
    [ "$state" = idle ] && break
    sleep 0.2
  done
  if [ "$state" != idle ]; then
    echo "slurm: node not idle after 30 s (state '$state')"
    tail -20 "$dir"/log/*.log "$dir"/log/*.stdout
    return 1
  fi
  echo "slurm: node $SC_HOST idle after $((i / 5)) s"
}

slurm_cluster_stop() {
  [ -n "${SC_DIR:-}" ] || return 0
  if [ ${#SC_PIDS[@]} -ge 2 ]; then
    scancel --full --quiet --user=root 2>/dev/null || true
    local i
    for i in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  local pid
  for ((i = ${#SC_PIDS[@]} - 1; i >= 0; i--)); do  # slurmd, slurmctld, then munged
    pid=${SC_PIDS[$i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "slurm: daemons stopped (PIDs ${SC_PIDS[*]})"
  SC_PIDS=()
}
