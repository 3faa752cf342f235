#!/usr/bin/env bash
# A one-machine SLURM cluster for the tests and the demo.
#
#   deploy/slurm-cluster.sh start [--nodes N] [--accounting]
#                                     install (if needed) and start munged, slurmctld and N slurmd
#                                     (default 1), with --accounting also MariaDB and slurmdbd;
#                                     a cold start forgets old jobs
#   deploy/slurm-cluster.sh stop        stop the daemons this script started (by pidfile)
#   deploy/slurm-cluster.sh status      show daemons and `sinfo`; exit 0 only if the controller answers
#   deploy/slurm-cluster.sh env         print `export SLURM_CONF=...` for clients
#   deploy/slurm-cluster.sh nodes       print the compute node names, one a line
#   deploy/slurm-cluster.sh stop-ctld   stop only slurmctld (the "controller outage" test)
#   deploy/slurm-cluster.sh start-ctld  start only slurmctld again (recovers its saved state)
#   deploy/slurm-cluster.sh kill-node NAME    SIGKILL one node's slurmd and everything running on it
#   deploy/slurm-cluster.sh revive-node NAME  start that slurmd again and resume the node
#
# Works as root in a container without systemd. Everything lives in one state dir (default
# /var/tmp/supervisor-slurm, override with SLURM_DEV_DIR): slurm.conf, controller state, slurmd
# spools, logs, pidfiles, the accounting database. No cgroup.conf: with proctrack/linuxproc and
# task/none neither daemon reads one (checked on 22.05 in a gVisor container).
#
# Layouts. One node (the default, used by the demo) is this host under its own name. With
# --nodes N (N > 1) the nodes are node01..nodeNN: separate slurmd processes on this host, each with
# its own port and spool, reached over 127.0.0.1; srun sees a real multi-node allocation
# (SLURMD_NODENAME differs per node, SLURM_JOB_NODELIST is a host list like node[01-04]).
# Partitions follow the team's cluster: boost_usr_prod (default, every node), lrd_all_serial (one
# node per job) and bigmem (the last node, declared with the most memory). `start` writes the
# options into "$DIR/layout"; the other commands read them from there.
#
# --accounting adds MariaDB (its own datadir and unix socket under the state dir, no TCP) and
# slurmdbd, registers the cluster, an account and root with `sacctmgr -i`, so `sacct` answers.
# It also lowers MinJobAge to 30 s, so a test can reach the state in which only sacct still knows
# a finished job, and SlurmdTimeout to 10 s, so a killed node is DOWN within ~20 s.
#
# Ports: slurmctld listens on SLURM_DEV_PORT_BASE (default 6817), node i's slurmd on base+i,
# slurmdbd on base+100. A second cluster next to the default one needs another state dir and base,
# e.g. SLURM_DEV_DIR=/var/tmp/supervisor-slurm-mn SLURM_DEV_PORT_BASE=7817 SLURM_DEV_LINK_ETC=0.
#
# Where clients find the config: the daemons are pointed at "$SLURM_DEV_DIR/slurm.conf" with
# SLURM_CONF. Clients (sbatch, squeue, scontrol, scancel, and the supervisor that runs them) would
# need the same variable in their environment, which is easy to forget in a tmux pane or a pytest
# run. So `start` also makes /etc/slurm/slurm.conf a symlink to the generated file, but only when
# that path is free or already one of our symlinks (a real site config is never touched), and not
# at all with SLURM_DEV_LINK_ETC=0; then clients need `eval "$(deploy/slurm-cluster.sh env)"`.
# `env` is always correct either way.
#
# Facts this config relies on (slurm-wlm 22.05 on Debian bookworm):
#  - Without accounting, finished jobs stay visible in `scontrol show job` for MinJobAge (left at
#    300 s on purpose): the supervisor learns how a job ended from there.
#  - fake[01-02] are declared State=FUTURE and are in no partition: they never take jobs, never get
#    pinged, yet they are valid node names, so `sbatch --exclude=fake01` is accepted. Excluding a
#    name that is not declared at all is refused by sbatch ("Invalid node name specified").
#  - Several slurmd run side by side when each node has its own Port and the spool, pid and log
#    paths contain %n. A SIGKILLed slurmd leaves its slurmstepd processes (and the job's) running:
#    a real dead node takes them with it, so kill-node kills them too. They are found by the node's
#    slurmd log file, which slurmd and every slurmstepd it forks hold open.
#  - slurmdbd reaches MariaDB through libmariadb, which takes its unix socket from MYSQL_UNIX_PORT.
#  - Jobs address each other by node name (the train template's rendezvous is the first node of the
#    allocation, by name), which on a real cluster resolves. Here node01.. are aliases of this host:
#    `start` appends one "127.0.0.1 node01 ..." line to /etc/hosts for the names that do not resolve.
set -euo pipefail

DIR=${SLURM_DEV_DIR:-/var/tmp/supervisor-slurm}
PORT_BASE=${SLURM_DEV_PORT_BASE:-6817}
LINK_ETC=${SLURM_DEV_LINK_ETC:-1}
READY_TIMEOUT=${SLURM_DEV_READY_TIMEOUT:-60}
CONF="$DIR/slurm.conf"
DBD_CONF="$DIR/slurmdbd.conf" # slurmdbd looks for it next to $SLURM_CONF
LAYOUT="$DIR/layout"
CONF_CHANGED=0
CTLD_PID="$DIR/slurmctld.pid"
DBD_PID="$DIR/slurmdbd.pid"
MUNGED_PID="$DIR/munged.pid" # exists only when this script started munged
DB_DIR="$DIR/mariadb"
DB_PID="$DB_DIR/mariadbd.pid"
DB_SOCKET="$DB_DIR/mariadbd.sock"
MUNGE_SOCKET=/run/munge/munge.socket.2
ETC_CONF=/etc/slurm/slurm.conf
HOSTS_FILE=/etc/hosts
CLUSTER_NAME=supervisor-dev
ACCOUNT=dev
DEFAULT_SLURMCTLD_PORT=6817

# The layout: from `start`'s options, else from the state dir, else one node without accounting.
NODES=1
ACCOUNTING=0

log() { echo "slurm-cluster: $*" >&2; }
die() { log "$*"; exit 1; }
usage_error() { log "$*"; exit 2; }

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (the daemons run as SlurmUser=root)"; }

pid_alive() { # pidfile -> 0 if it names a live process
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

slurm() { SLURM_CONF="$CONF" "$@"; }

# ---- layout ------------------------------------------------------------------------------------

read_layout() {
    local key value
    [[ -f $LAYOUT ]] || return 0
    while IFS='=' read -r key value; do
        case $key in
            nodes) NODES=$value ;;
            accounting) ACCOUNTING=$value ;;
            port_base) PORT_BASE=$value ;;
        esac
    done <"$LAYOUT"
}

layout_text() { printf 'nodes=%s\naccounting=%s\nport_base=%s\n' "$NODES" "$ACCOUNTING" "$PORT_BASE"; }

multi_node() { ((NODES > 1)); }

node_names() { # one per line
    local i
    if multi_node; then
        for i in $(seq 1 "$NODES"); do printf 'node%02d\n' "$i"; done
    else
        hostname -s
    fi
}

node_list() { # host-list form for slurm.conf
    if multi_node; then
        printf 'node[01-%02d]' "$NODES"
    else
        hostname -s
    fi
}

last_node() { node_names | tail -n 1; }

slurmd_pidfile() { # node
    if multi_node; then echo "$DIR/run/slurmd-$1.pid"; else echo "$DIR/slurmd.pid"; fi
}

slurmd_logfile() { # node
    if multi_node; then echo "$DIR/log/slurmd-$1.log"; else echo "$DIR/log/slurmd.log"; fi
}

check_node() { # name: exit 2 unless it is one of this cluster's compute nodes
    local name=${1:-}
    [[ -n $name ]] || usage_error "which node? one of: $(node_names | tr '\n' ' ')"
    # grep without -q: with pipefail, -q exiting at the first match can fail node_names with SIGPIPE.
    node_names | grep -xF -- "$name" >/dev/null || usage_error "unknown node '$name'; this cluster has: $(node_names | tr '\n' ' ')"
}

# ---- install and configure ---------------------------------------------------------------------

install_packages() {
    local need=()
    command -v slurmctld >/dev/null || need+=(slurmctld)
    command -v slurmd >/dev/null || need+=(slurmd)
    command -v sbatch >/dev/null || need+=(slurm-client)
    command -v munged >/dev/null || need+=(munge)
    if ((ACCOUNTING)); then
        command -v slurmdbd >/dev/null || need+=(slurmdbd)
        command -v mariadbd >/dev/null || need+=(mariadb-server)
    fi
    ((${#need[@]})) || return 0
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Without systemd the packages' own service start fails or is refused by policy-rc.d; this
    # script starts what it needs itself.
    apt-get install -y -q "${need[@]}"
}

write_if_changed() { # tmp file, target: replace target if different; 0 if it changed
    if [[ -f $2 ]] && cmp -s "$1" "$2"; then
        rm -f "$1"
        return 1
    fi
    mv -f "$1" "$2"
}

write_conf() {
    local host cpus mem node_mem i name port
    host=$(hostname -s)
    cpus=$(nproc)
    # slurmd marks the node invalid if it reports less memory than declared: leave headroom.
    mem=$(free -m | awk '/^Mem:/ {printf "%d", $2 * 0.9}')
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
    local tmp="$CONF.tmp.$$"
    {
        cat <<EOF
# Generated by deploy/slurm-cluster.sh; rewritten on every start.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$host
EOF
        if ((PORT_BASE != DEFAULT_SLURMCTLD_PORT)) || multi_node; then
            echo "SlurmctldPort=$PORT_BASE"
            multi_node || echo "SlurmdPort=$((PORT_BASE + 1))"
        fi
        cat <<EOF
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
EOF
        if multi_node; then
            cat <<EOF
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
EOF
        else
            cat <<EOF
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
EOF
        fi
        cat <<EOF
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
EOF
        if ((ACCOUNTING)); then
            cat <<EOF
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$((PORT_BASE + 100))
EOF
        else
            echo "AccountingStorageType=accounting_storage/none"
        fi
        cat <<EOF
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
# No mail on a dev box; without this slurmctld logs an error for every start.
MailProg=/bin/true
ReturnToService=2
EOF
        if ((ACCOUNTING)); then
            cat <<EOF
# Forget ended jobs quickly: sacct is the one source left after that (what the tests need to reach).
MinJobAge=30
EOF
        else
            cat <<EOF
# Keep ended jobs in scontrol for the default 5 minutes: that is how the supervisor sees exit codes.
MinJobAge=300
EOF
        fi
        echo "SlurmctldTimeout=30"
        if ((ACCOUNTING)) || multi_node; then
            echo "# A killed node is DOWN (and its jobs NODE_FAIL) within ~20 s."
            echo "SlurmdTimeout=10"
        else
            echo "SlurmdTimeout=30"
        fi
        cat <<EOF
MessageTimeout=10
InactiveLimit=0
KillWait=5
Waittime=0
EOF
        if multi_node; then
            # Memory: every slurmd reports the whole machine, so the nodes may share it on paper; the
            # last node gets the most, for the big-memory partition.
            node_mem=$((mem / NODES))
            i=0
            while read -r name; do
                i=$((i + 1))
                port=$((PORT_BASE + i))
                if [[ $name == "$(last_node)" ]]; then node_mem=$mem; fi
                echo "NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$port CPUs=$cpus RealMemory=$node_mem State=UNKNOWN"
            done < <(node_names)
        else
            echo "NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN"
        fi
        cat <<EOF
# Declared only so that --exclude has valid names to refer to; FUTURE nodes are never scheduled.
NodeName=fake[01-02] CPUs=1 RealMemory=100 State=FUTURE
EOF
        if multi_node; then
            cat <<EOF
PartitionName=boost_usr_prod Nodes=$(node_list) Default=YES MaxTime=INFINITE State=UP
PartitionName=lrd_all_serial Nodes=$(node_list) MaxNodes=1 MaxTime=04:00:00 State=UP
PartitionName=bigmem Nodes=$(last_node) MaxNodes=1 MaxTime=INFINITE State=UP
EOF
        else
            cat <<EOF
PartitionName=boost_usr_prod Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=lrd_all_serial Nodes=$host MaxTime=INFINITE State=UP
EOF
        fi
    } >"$tmp"
    if [[ -f $CONF ]] && ! cmp -s "$tmp" "$CONF"; then
        # Daemons already running keep the old file in memory: `start` tells them to reread it.
        CONF_CHANGED=1
    fi
    write_if_changed "$tmp" "$CONF" || true
    rm -f "$DIR/cgroup.conf" # written by earlier versions of this script
    if ((ACCOUNTING)); then write_dbd_conf; fi
    if [[ $LINK_ETC != 0 ]]; then link_etc_conf; fi
}

write_dbd_conf() {
    local tmp="$DBD_CONF.tmp.$$"
    cat >"$tmp" <<EOF
# Generated by deploy/slurm-cluster.sh; rewritten on every start.
AuthType=auth/munge
DbdHost=localhost
DbdPort=$((PORT_BASE + 100))
SlurmUser=root
PidFile=$DBD_PID
LogFile=$DIR/log/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
# localhost = the unix socket, which slurmdbd is given in MYSQL_UNIX_PORT; root authenticates by
# unix_socket, so no password is stored anywhere.
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$tmp" # slurmdbd refuses a config others can read
    write_if_changed "$tmp" "$DBD_CONF" || true
}

resolve_node_names() { # multi-node: node01.. must resolve, as node names do on a real cluster
    local name missing=()
    multi_node || return 0
    while read -r name; do
        getent hosts "$name" >/dev/null || missing+=("$name")
    done < <(node_names)
    ((${#missing[@]})) || return 0
    if [[ -w $HOSTS_FILE ]]; then
        log "adding ${missing[*]} (127.0.0.1) to $HOSTS_FILE"
        echo "127.0.0.1 ${missing[*]} # dev cluster nodes, added by deploy/slurm-cluster.sh" >>"$HOSTS_FILE"
    else
        log "warning: ${missing[*]} do not resolve and $HOSTS_FILE is not writable: jobs cannot reach each other by node name"
    fi
}

link_etc_conf() {
    mkdir -p "$(dirname "$ETC_CONF")"
    if [[ -L $ETC_CONF || ! -e $ETC_CONF ]]; then
        ln -sfn "$CONF" "$ETC_CONF"
    else
        log "$ETC_CONF is a real file; left alone. Clients need: eval \"\$($0 env)\""
    fi
}

# ---- daemons -----------------------------------------------------------------------------------

munge_works() { command -v munge >/dev/null && munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
    if munge_works; then
        return
    fi
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
    local user=root
    if id munge >/dev/null 2>&1; then
        user=munge
    fi
    # munged insists that its key, socket dir and log dir belong to the user it runs as.
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown "$user" /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/log/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # Its own pidfile lives under /run/munge (it must be writable by $user); ours records that we
    # started it, so `stop` never kills a munged somebody else runs.
    runuser -u "$user" -- munged --force --pid-file=/run/munge/munged.pid
    local i
    for i in $(seq 1 50); do
        if munge_works; then
            cp /run/munge/munged.pid "$MUNGED_PID"
            return
        fi
        sleep 0.1
    done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

db_answers() { [[ -S $DB_SOCKET ]] && mariadb --no-defaults --socket="$DB_SOCKET" -u root -e 'select 1' >/dev/null 2>&1; }

start_mariadb() { # [fresh]: a new, empty database (job ids start again at 1 after a cold start)
    if pid_alive "$DB_PID"; then
        return
    fi
    if [[ ${1:-} == fresh && ${SLURM_DEV_KEEP_STATE:-0} != 1 ]]; then
        rm -rf "$DB_DIR"
    fi
    mkdir -p "$DB_DIR"
    if [[ ! -d $DB_DIR/data/mysql ]]; then
        mariadb-install-db --no-defaults --datadir="$DB_DIR/data" --user=root \
            --auth-root-authentication-method=socket --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 ||
            die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
    fi
    # --no-defaults: nothing from /etc/mysql (its socket, port and datadir belong to a system server).
    setsid mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
        --pid-file="$DB_PID" --skip-networking --skip-log-bin --innodb-buffer-pool-size=64M \
        --log-error="$DIR/log/mariadbd.log" </dev/null >/dev/null 2>&1 &
    wait_for "MariaDB answering" db_answers
}

dbd_answers() { slurm sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1; }

start_dbd() {
    if pid_alive "$DBD_PID"; then
        return
    fi
    rm -f "$DBD_PID"
    SLURM_CONF="$CONF" MYSQL_UNIX_PORT="$DB_SOCKET" slurmdbd
    wait_for "slurmdbd answering" dbd_answers
}

register_accounting() { # cluster, account and root in it; each only once
    if ! slurm sacctmgr -n -P list cluster format=cluster | grep -xF "$CLUSTER_NAME" >/dev/null; then
        slurm sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
    if ! slurm sacctmgr -n -P list account format=account | grep -xF "$ACCOUNT" >/dev/null; then
        slurm sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER_NAME" Description="dev cluster" Organization=dev >/dev/null
    fi
    if ! slurm sacctmgr -n -P list association where user=root account="$ACCOUNT" format=user | grep -xF root >/dev/null; then
        slurm sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER_NAME" >/dev/null
    fi
}

start_ctld() { # [fresh]: forget the jobs of an earlier life of this cluster
    local clear=()
    if pid_alive "$CTLD_PID"; then
        return
    fi
    rm -f "$CTLD_PID"
    # Without -c the controller recovers jobs from StateSaveLocation, so `start-ctld` after `stop-ctld`
    # keeps them. A cold `start` clears them: jobs left from a previous boot or session would be requeued
    # and hold the node's CPUs (SLURM_DEV_KEEP_STATE=1 keeps them anyway).
    if [[ ${1:-} == fresh && ${SLURM_DEV_KEEP_STATE:-0} != 1 ]]; then
        clear=(-c)
        rm -f "$DIR/state/clustername"
    fi
    slurm slurmctld -f "$CONF" "${clear[@]}"
    wait_for "slurmctld answering" ctld_answers
}

start_slurmd() { # node
    local pidfile
    pidfile=$(slurmd_pidfile "$1")
    if pid_alive "$pidfile"; then
        return
    fi
    rm -f "$pidfile"
    mkdir -p "$DIR/spool/$1"
    slurm slurmd -f "$CONF" -N "$1"
}

ctld_answers() { slurm scontrol ping 2>/dev/null | grep 'is UP' >/dev/null; }

node_idle() { # node
    local state
    state=$(slurm sinfo -h -n "$1" -o '%T' 2>/dev/null | head -n1)
    case $state in
        idle | mixed | allocated) return 0 ;;
        # A node that was DOWN when slurmd came back (e.g. after a reboot of the box) is resumed.
        down* | drain* | fail*)
            slurm scontrol update NodeName="$1" State=RESUME >/dev/null 2>&1 || true
            return 1
            ;;
        *) return 1 ;;
    esac
}

all_nodes_idle() {
    local name
    while read -r name; do
        node_idle "$name" || return 1
    done < <(node_names)
}

wait_for() { # description, predicate...
    local what=$1 deadline=$((SECONDS + READY_TIMEOUT))
    shift
    until "$@"; do
        if ((SECONDS >= deadline)); then
            log "timed out waiting for $what; last log lines:"
            tail -n 20 "$DIR/log/"*.log >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
}

stop_pidfile() { # name, pidfile: TERM, wait, KILL
    local name=$1 file=$2 pid i
    if ! pid_alive "$file"; then
        rm -f "$file"
        return
    fi
    pid=$(<"$file")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name ($pid) ignored SIGTERM; killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
}

node_processes() { # node -> pids of its slurmd, its slurmstepds and everything below them
    local logfile roots
    logfile=$(slurmd_logfile "$1")
    # slurmd and every slurmstepd it forks keep the node's log file open: that names them.
    # (find fails on the processes it may not read, such as pid 1 in a container: not an error here)
    roots=$({ find /proc/[0-9]*/fd -lname "$logfile" 2>/dev/null || true; } | cut -d/ -f3 | sort -u | tr '\n' ' ')
    [[ -n $roots ]] || return 0
    # Job processes have other open files: follow parent links down from those roots.
    ps -e -o pid=,ppid= | awk -v roots="$roots" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
        { parent[$1] = $2 }
        END {
            do {
                grew = 0
                for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 }
            } while (grew)
            for (p in keep) print p
        }'
}

# ---- commands ----------------------------------------------------------------------------------

parse_start_options() {
    local running_layout
    while (($#)); do
        case $1 in
            --nodes)
                [[ ${2:-} =~ ^[1-9][0-9]?$ ]] || usage_error "--nodes needs a number from 1 to 99"
                NODES=$2
                shift 2
                ;;
            --nodes=*)
                NODES=${1#--nodes=}
                [[ $NODES =~ ^[1-9][0-9]?$ ]] || usage_error "--nodes needs a number from 1 to 99"
                shift
                ;;
            --accounting)
                ACCOUNTING=1
                shift
                ;;
            *) usage_error "start: unknown option '$1' (usage: $0 start [--nodes N] [--accounting])" ;;
        esac
    done
    # A running cluster of another shape is somebody's: say so instead of pulling it from under them.
    # One started before layouts were recorded is the default: one node, no accounting, port 6817.
    if pid_alive "$CTLD_PID"; then
        if [[ -f $LAYOUT ]]; then
            running_layout=$(<"$LAYOUT")
        else
            running_layout=$(NODES=1 ACCOUNTING=0 PORT_BASE=$DEFAULT_SLURMCTLD_PORT layout_text)
        fi
        if [[ $running_layout != "$(layout_text)" ]]; then
            usage_error "the cluster in $DIR runs with another layout ($(echo "$running_layout" | tr '\n' ' ')); stop it first"
        fi
    fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_ports_free() { # the ports of the daemons this start would launch; another cluster may hold them
    local ports=() i port
    pid_alive "$CTLD_PID" || ports+=("$PORT_BASE")
    for i in $(seq 1 "$NODES"); do
        pid_alive "$(slurmd_pidfile "$(node_names | sed -n "${i}p")")" || ports+=($((PORT_BASE + i)))
    done
    if ((ACCOUNTING)) && ! pid_alive "$DBD_PID"; then ports+=($((PORT_BASE + 100))); fi
    for port in "${ports[@]}"; do
        if port_busy "$port"; then
            usage_error "port $port is in use (another cluster on this machine?): pick another SLURM_DEV_PORT_BASE"
        fi
    done
}

cmd_start() {
    need_root
    parse_start_options "$@"
    check_ports_free
    install_packages
    mkdir -p "$DIR"
    layout_text >"$LAYOUT"
    write_conf
    resolve_node_names
    start_munge
    if ((ACCOUNTING)); then
        start_mariadb fresh
        start_dbd
        register_accounting
    fi
    start_ctld fresh
    local name
    while read -r name; do
        start_slurmd "$name"
    done < <(node_names)
    if ((CONF_CHANGED)); then
        log "slurm.conf changed; asking running daemons to reread it"
        slurm scontrol reconfigure
    fi
    wait_for "nodes $(node_list) idle" all_nodes_idle
    log "up: $(slurm sinfo -h -o '%P %a %D %T %N' | tr '\n' ';')"
}

cmd_stop() {
    need_root
    read_layout
    local name
    while read -r name; do
        stop_pidfile "slurmd $name" "$(slurmd_pidfile "$name")"
    done < <(node_names)
    stop_pidfile slurmctld "$CTLD_PID"
    stop_pidfile slurmdbd "$DBD_PID"
    stop_pidfile mariadbd "$DB_PID"
    if [[ -f $MUNGED_PID ]]; then
        # Another cluster on this machine (another SLURM_DEV_DIR) may authenticate through the same munged.
        if pgrep -x 'slurmctld|slurmd|slurmdbd' >/dev/null; then
            log "munged left running: other SLURM daemons on this machine still use it"
        else
            stop_pidfile munged "$MUNGED_PID"
        fi
    fi
}

show_daemon() { # label, pidfile
    if pid_alive "$2"; then
        echo "$1: running (pid $(<"$2"))"
    else
        echo "$1: stopped"
    fi
}

cmd_status() {
    read_layout
    local name rc=0
    echo "layout: nodes=$NODES accounting=$ACCOUNTING port_base=$PORT_BASE"
    if pid_alive "$MUNGED_PID"; then
        echo "munged: running (pid $(<"$MUNGED_PID"))"
    elif munge_works; then
        echo "munged: running (not started by this script)"
    else
        echo "munged: stopped"
    fi
    if ((ACCOUNTING)); then
        show_daemon mariadbd "$DB_PID"
        show_daemon slurmdbd "$DBD_PID"
    fi
    show_daemon slurmctld "$CTLD_PID"
    while read -r name; do
        show_daemon "slurmd $name" "$(slurmd_pidfile "$name")"
    done < <(node_names)
    if [[ -f $CONF ]] && slurm sinfo -h -o '%P %a %D %T %N' 2>/dev/null; then
        :
    else
        echo "sinfo: no answer"
        rc=1
    fi
    return "$rc"
}

cmd_start_ctld() {
    need_root
    [[ -f $CONF ]] || die "no $CONF: run '$0 start' first"
    read_layout
    start_ctld
}

cmd_kill_node() { # name
    need_root
    read_layout
    check_node "${1:-}"
    local pids
    pids=$(node_processes "$1" | tr '\n' ' ')
    if [[ -z $pids ]]; then
        log "node $1: nothing running"
    else
        # shellcheck disable=SC2086 # one pid per word
        kill -KILL $pids 2>/dev/null || true
        log "node $1: killed slurmd and what ran on it (pids ${pids% })"
    fi
    rm -f "$(slurmd_pidfile "$1")"
}

cmd_revive_node() { # name
    need_root
    read_layout
    check_node "${1:-}"
    start_slurmd "$1"
    wait_for "node $1 idle" node_idle "$1"
    log "node $1: $(slurm sinfo -h -n "$1" -o '%T')"
}

cmd=${1:-}
shift || true
case $cmd in
    start) cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    nodes) read_layout; node_names ;;
    stop-ctld) need_root; stop_pidfile slurmctld "$CTLD_PID" ;;
    start-ctld) cmd_start_ctld ;;
    kill-node) cmd_kill_node "$@" ;;
    revive-node) cmd_revive_node "$@" ;;
    *)
        echo "usage: $0 start [--nodes N] [--accounting]|stop|status|env|nodes|stop-ctld|start-ctld|kill-node NAME|revive-node NAME" >&2
        exit 2
        ;;
esac
