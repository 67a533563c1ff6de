#!/usr/bin/env bash
# A real one-host Slurm cluster for tests and for trying the Slurm path locally.
#
#   slurm/dev-cluster.sh up                 start munge, MariaDB, slurmdbd, slurmctld and N slurmd nodes
#   slurm/dev-cluster.sh down               cancel its jobs, stop what `up` started, undo /etc changes
#   slurm/dev-cluster.sh status             daemons, nodes, whether sacct answers
#   slurm/dev-cluster.sh accounting off|on  switch accounting storage off/on (restarts slurmctld only)
#
# Why this shape: there is no systemd here, so every daemon is started by hand with the settings
# that are known to work without cgroups (docs/slurm.md lists the traps). `up` is idempotent: a
# daemon that already answers is left alone and not recorded, so `down` stops only the processes
# whose pid files this script wrote under $STATE.
#
# Variables (environment):
#   CROSSCITY_SLURM_STATE   state, logs, pid files       [/var/lib/crosscity-slurm]
#   CROSSCITY_SLURM_NODES   emulated nodes node1..nodeN  [4]
#   CROSSCITY_SLURM_CPUS    CPUs each node advertises    [4]
#   CROSSCITY_SLURM_GPUS    fake GPUs (/dev/null) a node advertises as gres/gpu [2]
#   CROSSCITY_SLURM_MAX_ARRAY  MaxArraySize (small, so array splitting can be tested) [8]
#   CROSSCITY_SLURM_ACCOUNTING 1 = slurmdbd + MariaDB, 0 = no accounting [1]
set -euo pipefail

STATE=${CROSSCITY_SLURM_STATE:-/var/lib/crosscity-slurm}
NODES=${CROSSCITY_SLURM_NODES:-4}
CPUS=${CROSSCITY_SLURM_CPUS:-4}
GPUS=${CROSSCITY_SLURM_GPUS:-2}
MAX_ARRAY=${CROSSCITY_SLURM_MAX_ARRAY:-8}
ACCOUNTING=${CROSSCITY_SLURM_ACCOUNTING:-1}
CLUSTER=crosscity
MARK="# managed by crosscity slurm/dev-cluster.sh"
HOSTS_MARK="# crosscity-dev-cluster"
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
GRES_CONF=/etc/slurm/gres.conf
RUN=$STATE/run
LOG=$STATE/log
HOST=$(hostname -s)
NODE_NAMES=$(seq -f "node%g" 1 "$NODES" | tr '\n' ' ')

say() { printf '[dev-cluster] %s\n' "$*"; }
die() { printf '[dev-cluster] error: %s\n' "$*" >&2; exit 1; }

# Wait up to $1 seconds for the command "$2..." to succeed.
wait_for() {
    local limit=$1 what=$2; shift 2
    local deadline=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${limit}s (logs: $LOG)"
        sleep 0.2
    done
}

alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Refuse to overwrite a config file that someone else wrote.
ours_or_absent() { [[ ! -e $1 ]] || head -n1 "$1" | grep -qF "$MARK"; }

write_conf() {
    local path=$1 mode=$2 body=$3
    ours_or_absent "$path" || die "$path exists and was not written by this script; move it away first"
    printf '%s\n%s\n' "$MARK" "$body" >"$path.tmp"
    chmod "$mode" "$path.tmp"
    mv "$path.tmp" "$path"
}

slurm_conf() {
    local storage=accounting_storage/none
    [[ $1 == 1 ]] && storage=accounting_storage/slurmdbd
    cat <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
DependencyParameters=kill_invalid_depend
MailProg=/bin/true
ReturnToService=2
MaxArraySize=$MAX_ARRAY
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=$storage
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
$(for i in $(seq 1 "$NODES"); do
        echo "NodeName=node$i NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((17000 + i)) CPUs=$CPUS RealMemory=4096 Gres=gpu:$GPUS State=UNKNOWN"
    done)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        say "munge already answers; using it"
        return
    fi
    install -d -o munge -g munge -m 0755 /run/munge "$STATE/munge"
    chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
    runuser -u munge -- munged --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
        --seed-file="$STATE/munge/munged.seed"
    wait_for 10 munged bash -c 'munge -n </dev/null | unmunge'
    cp "$STATE/munge/munged.pid" "$RUN/munged.pid"
}

start_mariadb() {
    if mysqladmin ping >/dev/null 2>&1; then
        say "MariaDB already answers; using it"
    else
        install -d -o mysql -g root -m 0755 /run/mysqld
        setsid mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
            >"$LOG/mariadb.log" 2>&1 </dev/null &
        echo $! >"$RUN/mariadb.pid"
        wait_for 30 MariaDB mysqladmin ping
    fi
    mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'crosscity-dev';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start_slurmdbd() {
    alive "$RUN/slurmdbd.pid" && return
    write_conf "$DBD_CONF" 600 "AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=crosscity-dev
StorageLoc=slurm_acct_db"
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
}

start_slurmctld() {
    alive "$RUN/slurmctld.pid" && return
    slurmctld
    wait_for 20 slurmctld scontrol ping
}

start_nodes() {
    local i
    for i in $(seq 1 "$NODES"); do
        alive "$RUN/slurmd-node$i.pid" || slurmd -N "node$i"
    done
    # A node that was down when slurmctld last saw it stays down until resumed.
    local deadline=$((SECONDS + 20)) down
    until [[ $(sinfo -h -N -t idle,mixed,allocated -o '%N' | sort -u | wc -l) -eq $NODES ]]; do
        ((SECONDS < deadline)) || die "not all $NODES nodes became idle (logs: $LOG)"
        down=$(sinfo -h -N -t down,drain -o '%N' | sort -u | paste -sd, -)
        [[ -z $down ]] || scontrol update nodename="$down" state=resume 2>/dev/null || true
        sleep 0.3
    done
}

add_hosts_line() {
    grep -qF "$HOSTS_MARK" /etc/hosts || echo "127.0.0.1 $NODE_NAMES $HOSTS_MARK" >>/etc/hosts
}

remove_hosts_line() {
    # /etc/hosts may be a bind mount: rewrite in place rather than replace the file.
    if grep -qF "$HOSTS_MARK" /etc/hosts; then
        local kept
        kept=$(grep -vF "$HOSTS_MARK" /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
    fi
}

up() {
    [[ $(id -u) == 0 ]] || die "needs root (daemons run as root/munge/mysql)"
    local bin
    for bin in munged slurmctld slurmd sbatch; do
        command -v "$bin" >/dev/null || die "$bin missing: run .ci/slurm-setup.sh (apt-get install slurmctld slurmd slurm-client munge slurmdbd mariadb-server)"
    done
    mkdir -p "$RUN" "$LOG" "$STATE/ctld" "$STATE/dev"
    for i in $(seq 1 "$NODES"); do mkdir -p "$STATE/spool/node$i"; done
    for i in $(seq 0 $((GPUS - 1))); do ln -sfn /dev/null "$STATE/dev/nvidia$i"; done
    add_hosts_line
    [[ -f $STATE/accounting ]] || echo "$ACCOUNTING" >"$STATE/accounting"
    local acct
    acct=$(cat "$STATE/accounting")
    write_conf "$CONF" 644 "$(slurm_conf "$acct")"
    write_conf "$GRES_CONF" 644 "NodeName=node[1-$NODES] Name=gpu File=$STATE/dev/nvidia[0-$((GPUS - 1))]"
    start_munge
    if [[ $acct == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    start_slurmctld
    start_nodes
    say "up: $NODES nodes x $CPUS CPUs, MaxArraySize=$MAX_ARRAY, accounting=$acct (state: $STATE)"
}

# Stop the process in pid file $1 (only if this script wrote it), TERM then KILL after 10 s.
stop_pid() {
    local file=$1 pid
    [[ -f $file ]] || return 0
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        local deadline=$((SECONDS + 10))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$file"
}

cancel_jobs() {
    scontrol ping >/dev/null 2>&1 || return 0
    local jobs
    jobs=$(squeue -h -o '%A' 2>/dev/null | paste -sd' ' -)
    [[ -z $jobs ]] && return 0
    # shellcheck disable=SC2086
    scancel $jobs
    local deadline=$((SECONDS + 15))
    while [[ -n $(squeue -h -o '%A' 2>/dev/null) ]] && ((SECONDS < deadline)); do sleep 0.2; done
}

down() {
    cancel_jobs
    local f
    for f in "$RUN"/slurmd-*.pid; do stop_pid "$f"; done
    stop_pid "$RUN/slurmctld.pid"
    stop_pid "$RUN/slurmdbd.pid"
    stop_pid "$RUN/mariadb.pid"
    stop_pid "$RUN/munged.pid"
    for f in "$CONF" "$DBD_CONF" "$GRES_CONF"; do
        [[ -e $f ]] && ours_or_absent "$f" && rm -f "$f"
    done
    rm -f "$STATE/accounting"
    remove_hosts_line
    say "down"
}

status() {
    local f name rc=0
    for f in munged mariadb slurmdbd slurmctld $(seq -f "slurmd-node%g" 1 "$NODES"); do
        name=$RUN/$f.pid
        if alive "$name"; then
            say "$f: running (pid $(cat "$name"))"
        elif [[ -f $name ]]; then
            say "$f: DEAD (stale pid file $name)"
            rc=1
        else
            say "$f: not started by this script"
        fi
    done
    if scontrol ping >/dev/null 2>&1; then
        sinfo -N -o '%N %T %c %G'
        if sacct -n -X -S now-1minutes >/dev/null 2>&1; then say "accounting: sacct answers"; else say "accounting: off (sacct fails)"; fi
    else
        say "slurmctld does not answer"
        rc=1
    fi
    return $rc
}

accounting() {
    local want
    case ${1:-} in on) want=1 ;; off) want=0 ;; *) die "usage: $0 accounting on|off" ;; esac
    [[ -f $CONF ]] || die "cluster is not up"
    echo "$want" >"$STATE/accounting"
    write_conf "$CONF" 644 "$(slurm_conf "$want")"
    if [[ $want == 1 ]]; then
        start_mariadb
        start_slurmdbd
    fi
    # AccountingStorageType changes need a slurmctld restart; running jobs survive it.
    stop_pid "$RUN/slurmctld.pid"
    [[ $want == 0 ]] && stop_pid "$RUN/slurmdbd.pid"
    start_slurmctld
    start_nodes
    say "accounting $1"
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
accounting) accounting "${2:-}" ;;
*)
    echo "usage: $0 up|down|status|accounting on|off" >&2
    exit 2
    ;;
esac
