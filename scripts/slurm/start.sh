#!/usr/bin/env bash
# Start a one-node SLURM test cluster on this machine: munged, (mariadb + slurmdbd), slurmctld, slurmd.
#
#   bash scripts/slurm/start.sh [DIR]      DIR: state folder (default $PAUSETUNE_SLURM_DIR or /tmp/pausetune-slurm)
#   . DIR/env.sh                           then sinfo / sbatch / sacct / snakemake --profile profiles/slurm work
#   bash scripts/slurm/stop.sh [DIR]       stops exactly the daemons this script started (pids in DIR/pids/)
#
# Debian/Ubuntu, as root (slurmd must run as root). Idempotent: packages are installed with apt-get only when
# missing, daemons already running from DIR are left alone. Everything lives in DIR: configs, spool, state, logs,
# a private munge key and socket, a private MariaDB datadir on 127.0.0.1 (no system service is touched), so it
# cannot clash with a real SLURM on the machine (ports are off the defaults too; see PORT_* below).
# Two machine-wide paths remain: slurmd's configless link /run/slurm/conf (where `srun` inside a job finds its
# cluster) and munge's default socket; run one such test cluster per machine at a time (tests/test_slurm.py
# holds a lock for it).
# Accounting is on (slurmdbd + MariaDB), as on real clusters, so `sacct` answers and the Snakemake SLURM
# plugin's default status command (sacct) works. PAUSETUNE_SLURM_ACCOUNTING=0 skips it (then use
# `--slurm-status-command squeue`). No cgroups: proctrack/linuxproc, task/none.
# The node offers one fake GPU GRES (no device file) by default, so `--gpus=1` requests from the profile are
# scheduled exactly as on a GPU partition; PAUSETUNE_SLURM_GPUS=0 turns it off. Jobs still see no CUDA device.
set -euo pipefail

DIR=${1:-${PAUSETUNE_SLURM_DIR:-/tmp/pausetune-slurm}}
ACCOUNTING=${PAUSETUNE_SLURM_ACCOUNTING:-1}
GPUS=${PAUSETUNE_SLURM_GPUS:-1}
CLUSTER=${PAUSETUNE_SLURM_CLUSTER:-pausetune}
PARTITION=${PAUSETUNE_SLURM_TEST_PARTITION:-debug}
PORT_CTLD=${PAUSETUNE_SLURM_PORT:-16817}
PORT_SLURMD=$((PORT_CTLD + 1))
PORT_DBD=$((PORT_CTLD + 2))
PORT_DB=$((PORT_CTLD + 3))

die() { echo "slurm/start.sh: error: $*" >&2; exit 1; }
log() { echo "slurm/start.sh: $*"; }

[ "$(id -u)" = 0 ] || die "must run as root (slurmd runs as root; packages come from apt-get); uid is $(id -u)"

# ------------------------------------------------------------------------------------------------ packages
need=(slurmctld slurmd sbatch munged mungekey)
pkgs=(slurm-wlm munge)
if [ "$ACCOUNTING" = 1 ]; then need+=(slurmdbd sacctmgr mariadbd mariadb-install-db); pkgs+=(slurmdbd mariadb-server); fi
missing=()
for c in "${need[@]}"; do
  command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing+=("$c")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get here: install ${pkgs[*]} (Debian/Ubuntu packages) by hand"
  log "installing ${pkgs[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  # The packages' postinst scripts try to start system services; keep them from doing so (we start our own).
  policy=/usr/sbin/policy-rc.d; made_policy=0
  if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1; fi
  trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${pkgs[@]}"; } >"${TMPDIR:-/tmp}/pausetune-slurm-apt.log" 2>&1 \
    || { tail -n 30 "${TMPDIR:-/tmp}/pausetune-slurm-apt.log" >&2; die "apt-get install ${pkgs[*]} failed (log above)"; }
  [ "$made_policy" = 1 ] && rm -f "$policy"; trap - EXIT
fi
export PATH="/usr/sbin:/sbin:$PATH"

mkdir -p "$DIR"/{etc,pids,log,spool/ctld,spool/d,munge,run}
DIR=$(cd "$DIR" && pwd)
chmod 700 "$DIR/munge"

# running NAME: a daemon recorded in DIR/pids/NAME is alive (one whose own pid file in DIR/run is alive is adopted)
running() {
  [ -f "$DIR/pids/$1" ] && kill -0 "$(cat "$DIR/pids/$1")" 2>/dev/null && return 0
  [ -s "$DIR/run/$1.pid" ] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null && cp "$DIR/run/$1.pid" "$DIR/pids/$1" && return 0
  rm -f "$DIR/pids/$1"; return 1
}
wait_for() {  # wait_for SECONDS DESCRIPTION CMD...: poll CMD until it succeeds, at most SECONDS of wall time
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  while [ $SECONDS -lt $end ]; do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "$what did not come up in ${t}s; see $DIR/log/"
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ------------------------------------------------------------------------------------------------ munge
# SLURM's clients reach slurmdbd through munge's default socket whatever AuthInfo says (measured: sacctmgr
# ignores AuthInfo=socket=...), so a munged must listen there. A running system munged is used as it is;
# otherwise ours starts there with a private key and is stopped by stop.sh.
MUNGE_SOCK=/run/munge/munge.socket.2
munge_ok() { munge -n -S "$MUNGE_SOCK" | unmunge -S "$MUNGE_SOCK"; }
if ! running munged && ! munge_ok >/dev/null 2>&1; then
  mkdir -p /run/munge
  [ -f "$DIR/munge/munge.key" ] || mungekey -c -k "$DIR/munge/munge.key" >/dev/null
  chmod 400 "$DIR/munge/munge.key"
  rm -f "$DIR/run/munged.pid"
  munged --force --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCK" \
    --pid-file="$DIR/run/munged.pid" --log-file="$DIR/log/munged.log" --seed-file="$DIR/munge/munged.seed" \
    || die "munged failed to start: $(tail -n 3 "$DIR/log/munged.log" 2>/dev/null)"
  wait_for 10 munged test -s "$DIR/run/munged.pid"
  cp "$DIR/run/munged.pid" "$DIR/pids/munged"
  log "munged up on $MUNGE_SOCK"
fi
wait_for 10 "munge credentials" munge_ok
AUTHINFO="AuthInfo=socket=$MUNGE_SOCK"

# ------------------------------------------------------------------------------------------------ accounting
ACCT_CONF="AccountingStorageType=accounting_storage/none"
if [ "$ACCOUNTING" = 1 ]; then
  DB_SOCK="$DIR/mysql.sock"
  if ! running mariadbd; then
    if [ ! -d "$DIR/mysql/mysql" ]; then
      mariadb-install-db --user=root --datadir="$DIR/mysql" --skip-test-db --auth-root-authentication-method=socket \
        >"$DIR/log/mariadb-install.log" 2>&1 || { tail -n 20 "$DIR/log/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
    fi
    port_free "$PORT_DB" || die "port $PORT_DB (MariaDB) is taken; set PAUSETUNE_SLURM_PORT to another base port"
    mariadbd --no-defaults --user=root --datadir="$DIR/mysql" --socket="$DB_SOCK" --port="$PORT_DB" \
      --bind-address=127.0.0.1 --pid-file="$DIR/run/mariadbd.pid" --log-error="$DIR/log/mariadb.log" \
      --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --skip-name-resolve \
      --innodb-lock-wait-timeout=900 --max-allowed-packet=16M >/dev/null 2>&1 &
    echo $! > "$DIR/pids/mariadbd"
    wait_for 60 MariaDB mariadb-admin --socket="$DB_SOCK" ping
    mariadb --socket="$DB_SOCK" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'pausetune';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
    log "mariadb up on 127.0.0.1:$PORT_DB"
  fi
  cat > "$DIR/etc/slurmdbd.conf" <<CONF
AuthType=auth/munge
$AUTHINFO
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$PORT_DBD
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$PORT_DB
StorageUser=slurm
StoragePass=pausetune
StorageLoc=slurm_acct_db
PidFile=$DIR/run/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
CONF
  chmod 600 "$DIR/etc/slurmdbd.conf"
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$PORT_DBD
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
fi

# ------------------------------------------------------------------------------------------------ slurm.conf
NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
GRES_NODE=""; GRES_TYPES=""
if [ "$GPUS" -gt 0 ] 2>/dev/null; then
  GRES_TYPES="GresTypes=gpu"
  GRES_NODE="Gres=gpu:$GPUS"
  # gres/gpu needs device files (Count alone registers 0 GPUs): plain files stand in for /dev/nvidia*
  mkdir -p "$DIR/fakegpu"; for i in $(seq 0 $((GPUS - 1))); do touch "$DIR/fakegpu/gpu$i"; done
  echo "NodeName=$NODE Name=gpu File=$DIR/fakegpu/gpu[0-$((GPUS - 1))]" > "$DIR/etc/gres.conf"
else
  : > "$DIR/etc/gres.conf"
fi
cat > "$DIR/etc/slurm.conf" <<CONF
# pausetune one-node test cluster (scripts/slurm/start.sh); not for production.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$PORT_CTLD
SlurmdPort=$PORT_SLURMD
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
$AUTHINFO
StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# FIFO: a job starts the moment the one before it ends (backfill waits for its next cycle)
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
MpiDefault=none
# Finished jobs stay visible to squeue for a while (a status_command=squeue fallback needs this)
MinJobAge=600
InactiveLimit=0
KillWait=5
Waittime=0
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmctldParameters=enable_configless
$GRES_TYPES
$ACCT_CONF
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$DIR/env.sh" <<ENV
# source me: the SLURM client commands then talk to the test cluster in $DIR
export SLURM_CONF=$DIR/etc/slurm.conf
export PATH=/usr/sbin:/sbin:\$PATH
ENV
export SLURM_CONF="$DIR/etc/slurm.conf"

# ------------------------------------------------------------------------------------------------ daemons
if [ "$ACCOUNTING" = 1 ] && ! running slurmdbd; then
  port_free "$PORT_DBD" || die "port $PORT_DBD (slurmdbd) is taken; set PAUSETUNE_SLURM_PORT to another base port"
  rm -f "$DIR/run/slurmdbd.pid"
  # slurmdbd reads slurmdbd.conf from the folder of $SLURM_CONF
  slurmdbd \
    || die "slurmdbd failed to start: $(tail -n 5 "$DIR/log/slurmdbd.log" 2>/dev/null)"
  wait_for 60 slurmdbd test -s "$DIR/run/slurmdbd.pid"
  cp "$DIR/run/slurmdbd.pid" "$DIR/pids/slurmdbd"
  wait_for 60 "slurmdbd (sacctmgr list cluster)" timeout 10 sacctmgr -n list cluster
  sacctmgr -n list cluster format=cluster | grep -qw "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
  sacctmgr -n list account format=account | grep -qw pausetune || sacctmgr -i add account pausetune Description=tests Organization=pausetune >/dev/null
  sacctmgr -n list user format=user | grep -qw root || sacctmgr -i add user root DefaultAccount=pausetune >/dev/null
  sacctmgr -n list assoc format=user,account | grep -Eq "root +pausetune" || sacctmgr -i add user root Account=pausetune >/dev/null
  log "slurmdbd up on port $PORT_DBD (cluster $CLUSTER, account pausetune)"
fi
if ! running slurmctld; then
  port_free "$PORT_CTLD" || die "port $PORT_CTLD (slurmctld) is taken; set PAUSETUNE_SLURM_PORT to another base port"
  rm -f "$DIR/run/slurmctld.pid"
  slurmctld -f "$DIR/etc/slurm.conf" -i || die "slurmctld failed to start: $(tail -n 5 "$DIR/log/slurmctld.log" 2>/dev/null)"
  wait_for 30 slurmctld test -s "$DIR/run/slurmctld.pid"
  cp "$DIR/run/slurmctld.pid" "$DIR/pids/slurmctld"
  wait_for 30 "slurmctld (scontrol ping)" sh -c "timeout 10 scontrol ping | grep -q UP"
  log "slurmctld up on port $PORT_CTLD"
fi
if ! running slurmd; then
  rm -f "$DIR/run/slurmd.pid"
  # Configless, as many real clusters run: slurmd fetches its config from slurmctld and publishes it in
  # /run/slurm/conf, where commands inside jobs find it. They must: the Snakemake job step calls `srun` with
  # every SLURM_* variable stripped from its environment, SLURM_CONF included.
  [ ! -e /etc/slurm/slurm.conf ] || log "warning: /etc/slurm/slurm.conf exists; srun inside jobs will read it, not ours"
  slurmd --conf-server "127.0.0.1:$PORT_CTLD" || die "slurmd failed to start: $(tail -n 5 "$DIR/log/slurmd.log" 2>/dev/null)"
  wait_for 30 slurmd test -s "$DIR/run/slurmd.pid"
  cp "$DIR/run/slurmd.pid" "$DIR/pids/slurmd"
fi
node_ready() { sinfo -h -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)'; }
if ! node_ready; then
  scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
  wait_for 30 "node $NODE (sinfo idle)" node_ready
fi
log "cluster $CLUSTER ready: $(sinfo -h -o '%P %D %T %c cpus %m MB %G')"
log "use it with: . $DIR/env.sh"
