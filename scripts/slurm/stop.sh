#!/usr/bin/env bash
# Stop the test cluster that scripts/slurm/start.sh started in DIR: only the daemons whose pids it recorded.
#   bash scripts/slurm/stop.sh [DIR] [--purge]     --purge also deletes DIR (state, accounting DB, logs)
set -uo pipefail
DIR=${PAUSETUNE_SLURM_DIR:-/tmp/pausetune-slurm}; PURGE=0
for a in "$@"; do case "$a" in --purge) PURGE=1 ;; *) DIR=$a ;; esac; done
[ -d "$DIR/pids" ] || { echo "slurm/stop.sh: nothing started in $DIR"; exit 0; }
# reverse start order: compute node, controller, accounting, database, auth
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$DIR/pids/$d"; [ -f "$f" ] || continue
  pid=$(cat "$f")
  # munged serves the machine's default socket: leave ours up while another test cluster still runs on it
  if [ "$d" = munged ] && pgrep -x slurmctld >/dev/null 2>&1; then
    echo "slurm/stop.sh: munged ($pid) left running: another slurmctld still uses /run/munge/munge.socket.2"
    rm -f "$f"; continue
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null; echo "slurm/stop.sh: $d ($pid) killed"; else echo "slurm/stop.sh: $d ($pid) stopped"; fi
  fi
  rm -f "$f"
done
# slurmd's configless link, when it still points at this cluster
[ "$(readlink /run/slurm/conf 2>/dev/null)" = "$DIR/spool/d/conf-cache" ] && rm -f /run/slurm/conf
if [ "$PURGE" = 1 ]; then rm -rf "$DIR"; echo "slurm/stop.sh: removed $DIR"; fi
exit 0
