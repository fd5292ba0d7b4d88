#!/usr/bin/env bash
#
# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.
#
# A single-host OpenStack for the plugin, without systemd (run as root):
# MariaDB and RabbitMQ from Debian packages; Keystone, Glance (file store),
# Placement, Neutron (ML2, no agents) and Nova (API, conductor, scheduler,
# compute with nova_lifecycle.LibvirtLifecycleDriver on the real libvirtd
# of tools/libvirt-setup.sh) from PyPI in one virtualenv, under
# constraints/upper-constraints-2026.2.txt. See doc/source/services.rst.
#
#   tools/services.sh up       install what is missing, start what is not
#                              running, upload the test guest, check the APIs
#   tools/services.sh down     delete the deployment's servers, stop every
#                              process `up` started (by pid), check none is
#                              left
#   tools/services.sh status   each service, its pid and RSS; exit 0 only
#                              when all run
#   tools/services.sh smoke    with openstacksdk: boot a server of the test
#                              guest (networks='none'), stop, start, delete
#                              it; one line per action with its time
#   tools/services.sh compute-driver plugin|upstream [OPTION=VALUE...]
#                              nova-compute on nova_lifecycle.
#                              LibvirtLifecycleDriver or libvirt.
#                              LibvirtDriver, with these [DEFAULT] options
#                              (kept until the next compute-driver or
#                              down); restarts nova-compute only and waits
#                              until the API shows it up
#   tools/services.sh stop|start mariadb|rabbitmq|nova-compute
#                              one service (the main job's failure
#                              scenarios); start waits until it serves
#
# Environment:
#   NOVA_LIFECYCLE_SERVICES_DIR   state directory (configs, logs, pid files,
#                                 data, clouds.yaml); default
#                                 /var/lib/nova-lifecycle-services
#   NOVA_LIFECYCLE_SERVICES_VENV  the virtualenv; default $DIR/venv
#   NOVA_LIFECYCLE_SERVICES_TIMEOUT  seconds to wait for one service
#                                 (default 120)
#   NOVA_LIFECYCLE_SERVICES_STOP_TIMEOUT  seconds a process may take to
#                                 exit on SIGTERM before SIGKILL (30)
#   NOVA_LIFECYCLE_<OPTION>       [lifecycle] options of nova-compute, as
#                                 in devstack/settings
#   PYTHON                        python for the virtualenv (python3)
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
STATE=$(realpath -m "${NOVA_LIFECYCLE_SERVICES_DIR:-/var/lib/nova-lifecycle-services}")
VENV=${NOVA_LIFECYCLE_SERVICES_VENV:-$STATE/venv}
TIMEOUT=${NOVA_LIFECYCLE_SERVICES_TIMEOUT:-120}
STOP_TIMEOUT=${NOVA_LIFECYCLE_SERVICES_STOP_TIMEOUT:-30}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=$TOP/constraints/upper-constraints-2026.2.txt
ETC=$STATE/etc
LOGS=$STATE/log
RUN=$STATE/run
DATA=$STATE/data
DONE=$STATE/done

# The 2026.2 server releases. upper-constraints lists the libraries only,
# not the services; with it pip resolves all of these without relaxing any
# pin (checked with nova 34.0.0 etc.: no conflict).
PIP_PACKAGES=(
    nova==34.0.0
    keystone==30.0.0
    glance==33.0.0
    openstack-placement==16.0.0
    neutron==29.0.0
    # neutron 29 imports pyroute2 (neutron-db-manage, through
    # neutron.privileged) but does not require it in its metadata.
    pyroute2
    gunicorn
    PyMySQL
    openstacksdk
    python-openstackclient
)
APT_PACKAGES=(mariadb-server rabbitmq-server qemu-utils)

SERVICES="mariadb rabbitmq keystone glance placement neutron nova-api"
SERVICES+=" nova-conductor nova-scheduler nova-compute"
HOST_IP=127.0.0.1
KEYSTONE_URL=http://$HOST_IP:5000/v3
RABBIT_ENV=()
START_ALL=$EPOCHREALTIME

TOOL=services
# shellcheck source=tools/common.sh
. "$TOP/tools/common.sh"

# step <title> <function> [args]: run it, print one line with its time.
step() {
    local title=$1 t0=$EPOCHREALTIME
    shift
    "$@"
    say "$(printf '%-44s %6s s' "$title" "$(since "$t0")")"
}

# alive <pid>: it exists and is no zombie (PID 1 here reaps late).
alive() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat:0:1}" != Z ]
}

# start_time <pid>: when it started (field 22 of /proc/<pid>/stat).
start_time() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    echo "$stat" | awk '{ print $20 }'
}

# write_pid <name> <pid>: "<pid> <start time>", so that a recycled pid is
# never taken for the service.
write_pid() {
    echo "$2 $(start_time "$2")" > "$RUN/$1.pid"
}

pid_of() {
    local f=$RUN/$1.pid pid started
    [ -r "$f" ] || return 0
    read -r pid started < "$f" || true
    if [ -n "$pid" ] && alive "$pid" \
            && [ "$(start_time "$pid")" = "$started" ]; then
        echo "$pid"
    fi
}

running() {
    [ -n "$(pid_of "$1")" ]
}

show_log() {
    local log=$LOGS/$1.log
    if [ -s "$log" ]; then
        echo "---- last 20 lines of $log ----" >&2
        tail -n 20 "$log" >&2
        echo "----" >&2
    fi
}

# service_failed <name> <reason>: stop what is left of it, show its log.
service_failed() {
    local pid
    pid=$(pid_of "$1")
    if [ -n "$pid" ]; then
        for pid in $pid $(children "$pid"); do
            stop_pid "$1" "$pid"
        done
    fi
    show_log "$1"
    fail "$1 did not start: $2 (log: $LOGS/$1.log)"
}

# launch <name> <command...>: start it detached, its output in its log.
launch() {
    local name=$1
    shift
    echo "==== $(date -u '+%F %T') started by tools/services.sh" \
        >> "$LOGS/$name.log"
    # Where this start's output begins (log_has reads only that).
    stat -c %s "$LOGS/$name.log" > "$RUN/$name.logpos"
    # In the state directory: `down` finds leftovers by their cwd too.
    setsid env -C "$STATE" "$@" </dev/null >>"$LOGS/$name.log" 2>&1 &
    write_pid "$name" $!
}

# wait_for <name> <check command...>: until the check passes, or fail
# naming the service when its process exits or the timeout passes.
wait_for() {
    local name=$1 deadline
    deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        running "$name" || service_failed "$name" "its process exited"
        [ "$SECONDS" -lt "$deadline" ] \
            || service_failed "$name" "not ready after $TIMEOUT s"
        sleep 0.5
    done
}

http_ok() {
    local code
    code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "$1") || return 1
    [ "$code" != 000 ] && [ "${code:0:1}" != 5 ]
}

# port_free <name> <port>: nothing else listens there (a check of the
# service would otherwise reach the other server).
port_free() {
    if ss -Hltn "sport = :$2" 2>/dev/null | grep -q .; then
        fail "$1 cannot start: port $2 is taken by another process" \
            "($(ss -Hltnp "sport = :$2" | grep -o 'users:.*' | head -n 1))"
    fi
}

# log_has <name> <text>: the service logged it since its last start.
log_has() {
    local pos
    pos=$(cat "$RUN/$1.logpos" 2>/dev/null || echo 0)
    tail -c +$((pos + 1)) "$LOGS/$1.log" | grep -q "$2"
}

# ---------------------------------------------------------------- installs

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

install_packages() {
    local missing=() pkg policy_created=0
    for pkg in "${APT_PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Keep the init scripts from starting MariaDB and RabbitMQ: this
        # script starts them with its own data directories.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >"$LOGS/apt.log" 2>&1; then
        apt-get update -qq >>"$LOGS/apt.log" 2>&1 \
            || fail "apt-get update failed (see $LOGS/apt.log)"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >>"$LOGS/apt.log" 2>&1 \
            || fail "apt-get install ${missing[*]} failed" \
                "(see $LOGS/apt.log)"
    fi
    if [ "$policy_created" -eq 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
}

# What the virtualenv was built from; a change rebuilds it.
venv_stamp() {
    {
        printf '%s\n' "${PIP_PACKAGES[@]}"
        sha256sum "$CONSTRAINTS" | cut -d' ' -f1
        echo "$TOP"
    } | sha256sum | cut -d' ' -f1
}

install_venv() {
    local stamp
    stamp=$(venv_stamp)
    if [ "$(cat "$VENV/.nova-lifecycle-stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV" \
        || fail "cannot create the virtualenv $VENV with $PYTHON"
    "$VENV/bin/pip" install -q -U pip >"$LOGS/pip.log" 2>&1 \
        || fail "pip upgrade failed (see $LOGS/pip.log)"
    # The plugin, editable from this tree (nova-compute loads it from here).
    "$VENV/bin/pip" install -c "$CONSTRAINTS" "${PIP_PACKAGES[@]}" \
        -e "$TOP" >>"$LOGS/pip.log" 2>&1 \
        || fail "pip install failed (see $LOGS/pip.log)"
    echo "$stamp" > "$VENV/.nova-lifecycle-stamp"
}

# ---------------------------------------------------------------- MariaDB

PASSWORD=
load_password() {
    if [ ! -s "$STATE/password" ]; then
        (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' \
            > "$STATE/password")
    fi
    PASSWORD=$(cat "$STATE/password")
}

mysql_cli() {
    mariadb --defaults-file="$ETC/mariadb.cnf" -uroot "$@"
}

db_url() {
    echo "mysql+pymysql://$1:$PASSWORD@$HOST_IP/$1?charset=utf8"
}

start_mariadb() {
    cat > "$ETC/mariadb.cnf" <<EOF
[mysqld]
user = root
datadir = $DATA/mysql
socket = $RUN/mysqld.sock
pid-file = $RUN/mariadbd.pid
bind-address = $HOST_IP
port = 3306
log-error = $LOGS/mariadb.log
skip-name-resolve
max_connections = 500
innodb_buffer_pool_size = 128M
character-set-server = utf8mb4
collation-server = utf8mb4_general_ci
[client]
socket = $RUN/mysqld.sock
EOF
    if running mariadb; then
        return 0
    fi
    if [ ! -d "$DATA/mysql/mysql" ]; then
        mariadb-install-db --defaults-file="$ETC/mariadb.cnf" \
            --auth-root-authentication-method=socket --skip-test-db \
            >>"$LOGS/mariadb.log" 2>&1 \
            || service_failed mariadb "mariadb-install-db failed"
    fi
    port_free mariadb 3306
    launch mariadb mariadbd --defaults-file="$ETC/mariadb.cnf"
    wait_for mariadb mariadb-admin --defaults-file="$ETC/mariadb.cnf" \
        -uroot ping
}

create_databases() {
    local db sql=""
    for db in keystone glance placement nova_api nova nova_cell0 neutron; do
        sql+="CREATE DATABASE IF NOT EXISTS $db;"
    done
    # One user per service; nova's owns its three databases.
    for db in keystone glance placement nova neutron; do
        sql+="CREATE USER IF NOT EXISTS '$db'@'%' IDENTIFIED BY '$PASSWORD';"
        sql+="ALTER USER '$db'@'%' IDENTIFIED BY '$PASSWORD';"
    done
    for db in keystone glance placement neutron; do
        sql+="GRANT ALL ON $db.* TO '$db'@'%';"
    done
    for db in nova_api nova nova_cell0; do
        sql+="GRANT ALL ON $db.* TO 'nova'@'%';"
    done
    mysql_cli -e "$sql" || fail "creating the databases failed"
}

# ---------------------------------------------------------------- RabbitMQ

rabbit_env() {
    # Its own node, data and logs; the Erlang cookie in $HOME.
    RABBIT_ENV=(
        HOME="$DATA/rabbitmq"
        RABBITMQ_CONF_ENV_FILE="$ETC/rabbitmq/rabbitmq-env.conf"
        RABBITMQ_CONFIG_FILE="$ETC/rabbitmq/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$ETC/rabbitmq/enabled_plugins"
        RABBITMQ_NODENAME=rabbit@localhost
        RABBITMQ_NODE_IP_ADDRESS=$HOST_IP
        RABBITMQ_NODE_PORT=5672
        RABBITMQ_MNESIA_BASE="$DATA/rabbitmq/mnesia"
        RABBITMQ_LOG_BASE="$LOGS/rabbitmq"
        RABBITMQ_LOGS="$LOGS/rabbitmq-server.log"
        RABBITMQ_PID_FILE="$RUN/rabbitmq-beam.pid"
        ERL_EPMD_ADDRESS=$HOST_IP
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    )
}

rabbitmqctl() {
    env "${RABBIT_ENV[@]}" /usr/lib/rabbitmq/bin/rabbitmqctl "$@"
}

pids_named() {
    local f
    for f in /proc/[0-9]*/comm; do
        if [ "$(cat "$f" 2>/dev/null)" = "$1" ]; then
            f=${f#/proc/}
            echo "${f%/comm}"
        fi
    done
}

start_rabbitmq() {
    local pid
    rabbit_env
    mkdir -p "$ETC/rabbitmq" "$DATA/rabbitmq" "$LOGS/rabbitmq"
    : > "$ETC/rabbitmq/rabbitmq-env.conf"
    echo '[].' > "$ETC/rabbitmq/enabled_plugins"
    echo "listeners.tcp.default = $HOST_IP:5672" \
        > "$ETC/rabbitmq/rabbitmq.conf"
    if running rabbitmq; then
        return 0
    fi
    # epmd outlives the node: stop it in `down` only if it is ours.
    if [ -z "$(pids_named epmd)" ]; then
        rm -f "$RUN/epmd.pid"
        touch "$RUN/epmd.ours"
    fi
    # The script under /usr/lib (the one in /usr/sbin su's to the rabbitmq
    # user). It stays as the parent of beam.smp and stops the node on TERM.
    port_free rabbitmq 5672
    launch rabbitmq env "${RABBIT_ENV[@]}" \
        /usr/lib/rabbitmq/bin/rabbitmq-server
    wait_for rabbitmq rabbitmqctl -q await_startup --timeout 5
    if [ -e "$RUN/epmd.ours" ]; then
        pid=$(pids_named epmd | head -n 1)
        if [ -n "$pid" ]; then
            write_pid epmd "$pid"
        fi
        rm -f "$RUN/epmd.ours"
    fi
}

create_rabbit_user() {
    if ! rabbitmqctl -q list_users | grep -q '^openstack\b'; then
        rabbitmqctl -q add_user openstack "$PASSWORD" >/dev/null
    fi
    rabbitmqctl -q change_password openstack "$PASSWORD" >/dev/null
    rabbitmqctl -q set_permissions openstack '.*' '.*' '.*' >/dev/null
}

# ---------------------------------------------------------------- configs

# authtoken <user>: the [keystone_authtoken] section of a service.
authtoken() {
    cat <<EOF
[keystone_authtoken]
www_authenticate_uri = http://$HOST_IP:5000
auth_url = http://$HOST_IP:5000
auth_type = password
username = $1
password = $PASSWORD
project_name = service
user_domain_name = Default
project_domain_name = Default
service_token_roles_required = true
EOF
}

# auth_section <section> <user>: keystoneauth options of a client section.
auth_section() {
    cat <<EOF
[$1]
auth_url = http://$HOST_IP:5000
auth_type = password
username = $2
password = $PASSWORD
project_name = service
user_domain_name = Default
project_domain_name = Default
region_name = RegionOne
EOF
}

transport_url() {
    echo "rabbit://openstack:$PASSWORD@$HOST_IP:5672/"
}

# nova-compute's driver and extra [DEFAULT] options, as `compute-driver`
# recorded them: the first line plugin or upstream, then OPTION=VALUE
# lines. None recorded: the plugin.
COMPUTE_CHOICE=compute-driver

compute_driver_class() {
    case "$(head -n 1 "$STATE/$COMPUTE_CHOICE" 2>/dev/null)" in
        upstream) echo libvirt.LibvirtDriver ;;
        *) echo nova_lifecycle.LibvirtLifecycleDriver ;;
    esac
}

compute_options() {
    tail -n +2 "$STATE/$COMPUTE_CHOICE" 2>/dev/null | sed 's/=/ = /' || true
}

# The [lifecycle] options from NOVA_LIFECYCLE_* variables, as the devstack
# plugin writes them (devstack/plugin.sh); unset ones are left out.
lifecycle_section() {
    local name var
    echo "[lifecycle]"
    for name in stopped_event_delay fast_stopped_events stopped_event_grace \
            dispatch_workers delivery_retries delivery_retry_interval \
            stats_log_interval stall_timeout \
            metrics_textfile metrics_interval; do
        var=NOVA_LIFECYCLE_${name^^}
        if [ -n "${!var:-}" ]; then
            echo "$name = ${!var}"
        fi
    done
}

write_configs() {
    local paste=$VENV/etc
    mkdir -p "$ETC/keystone" "$ETC/glance" "$ETC/placement" \
        "$ETC/neutron" "$ETC/nova" "$DATA/keystone" "$DATA/glance" \
        "$DATA/neutron" "$DATA/nova/instances" "$DATA/lock"
    cat > "$ETC/keystone/keystone.conf" <<EOF
[database]
connection = $(db_url keystone)
[token]
provider = fernet
[fernet_tokens]
key_repository = $DATA/keystone/fernet-keys
[credential]
key_repository = $DATA/keystone/credential-keys
[oslo_concurrency]
lock_path = $DATA/lock
EOF
    cat > "$ETC/glance/glance-api.conf" <<EOF
[DEFAULT]
enabled_backends = file:file
worker_self_reference_url = http://$HOST_IP:9292
[database]
connection = $(db_url glance)
[paste_deploy]
flavor = keystone
config_file = $paste/glance/glance-api-paste.ini
[glance_store]
default_backend = file
[file]
filesystem_store_datadir = $DATA/glance/images
[os_glance_staging_store]
filesystem_store_datadir = $DATA/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = $DATA/glance/tasks
[oslo_concurrency]
lock_path = $DATA/lock
$(authtoken glance)
EOF
    cat > "$ETC/placement/placement.conf" <<EOF
[placement_database]
connection = $(db_url placement)
[api]
auth_strategy = keystone
$(authtoken placement)
EOF
    cat > "$ETC/neutron/neutron.conf" <<EOF
[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = $(transport_url)
api_paste_config = $paste/neutron/api-paste.ini
state_path = $DATA/neutron
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
[database]
connection = $(db_url neutron)
[oslo_concurrency]
lock_path = $DATA/lock
$(authtoken neutron)
$(auth_section nova nova)
EOF
    # ML2 without agents: no mechanism driver; servers use no network.
    cat > "$ETC/neutron/ml2_conf.ini" <<EOF
[ml2]
type_drivers = flat,vlan
tenant_network_types =
mechanism_drivers =
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
EOF
    # Nova: one file per service, like devstack's nova.conf/nova-cpu.conf.
    local common
    common=$(cat <<EOF
[DEFAULT]
transport_url = $(transport_url)
state_path = $DATA/nova
instances_path = $DATA/nova/instances
my_ip = $HOST_IP
# One host: a resize (tools/tempest.sh) goes to the same host.
allow_resize_to_same_host = true
[oslo_concurrency]
lock_path = $DATA/lock
[oslo_messaging_notifications]
driver = noop
[vnc]
enabled = false
[spice]
enabled = false
[service_user]
send_service_user_token = true
auth_url = http://$HOST_IP:5000
auth_type = password
username = nova
password = $PASSWORD
project_name = service
user_domain_name = Default
project_domain_name = Default
$(auth_section placement nova)
$(auth_section neutron nova)
EOF
)
    local dbs
    dbs=$(printf '[api_database]\nconnection = %s\n[database]\nconnection = %s\n' \
        "$(db_url nova | sed 's|/nova?|/nova_api?|')" "$(db_url nova)")
    # nova's WSGI entry point loads its paste pipeline from the first of
    # OS_NOVA_CONFIG_FILES, next to nova-api.conf.
    cp "$paste/nova/api-paste.ini" "$ETC/nova/api-paste.ini"
    cat > "$ETC/nova/nova-api.conf" <<EOF
$common
$dbs
[api]
auth_strategy = keystone
$(authtoken nova)
EOF
    cat > "$ETC/nova/nova-conductor.conf" <<EOF
$common
$dbs
[conductor]
workers = 1
EOF
    cat > "$ETC/nova/nova-scheduler.conf" <<EOF
$common
$dbs
[scheduler]
workers = 1
EOF
    # nova-compute as devstack/plugin.sh configures nova-cpu.conf. No
    # database: it reaches the cell through nova-conductor.
    cat > "$ETC/nova/nova-compute.conf" <<EOF
$common
[DEFAULT]
compute_driver = $(compute_driver_class)
$(compute_options)
[libvirt]
virt_type = qemu
connection_uri = qemu:///system
[nova_sys_admin]
helper_command = $VENV/bin/privsep-helper --config-file $ETC/nova/nova-compute.conf
$(lifecycle_section)
EOF
    chmod 600 "$ETC"/*/*.conf "$ETC"/*/*.ini
    cat > "$STATE/clouds.yaml" <<EOF
# tools/services.sh: OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml
# OS_CLOUD=nova-lifecycle openstack server list
clouds:
  nova-lifecycle:
    auth:
      auth_url: $KEYSTONE_URL
      username: admin
      password: $PASSWORD
      project_name: admin
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: 3
EOF
    cat > "$STATE/openrc" <<EOF
export OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml
export OS_CLOUD=nova-lifecycle
export PATH=$VENV/bin:\$PATH
EOF
    chmod 600 "$STATE/clouds.yaml" "$STATE/openrc"
}

# ------------------------------------------------------ OpenStack services

# once <marker> <command...>: a setup step done once per state directory.
once() {
    local marker=$DONE/$1
    shift
    [ -e "$marker" ] && return 0
    "$@" >>"$LOGS/setup.log" 2>&1 || {
        echo "---- last 20 lines of $LOGS/setup.log ----" >&2
        tail -n 20 "$LOGS/setup.log" >&2
        fail "'$*' failed"
    }
    touch "$marker"
}

setup_keystone() {
    local conf=$ETC/keystone/keystone.conf km=$VENV/bin/keystone-manage
    once keystone-db "$km" --config-file "$conf" db_sync
    once keystone-fernet "$km" --config-file "$conf" fernet_setup \
        --keystone-user root --keystone-group root
    once keystone-credential "$km" --config-file "$conf" credential_setup \
        --keystone-user root --keystone-group root
    once keystone-bootstrap "$km" --config-file "$conf" bootstrap \
        --bootstrap-password "$PASSWORD" \
        --bootstrap-admin-url "$KEYSTONE_URL" \
        --bootstrap-internal-url "$KEYSTONE_URL" \
        --bootstrap-public-url "$KEYSTONE_URL" \
        --bootstrap-region-id RegionOne
}

# start_api <name> <port> <wsgi module> <env...>: gunicorn, one worker of
# 8 threads. Its settings come from ./gunicorn.conf.py, not the command
# line: the services parse sys.argv with oslo.config, which rejects
# gunicorn's options.
start_api() {
    local name=$1 port=$2 app=$3 dir=$ETC/${1%-api}
    shift 3
    cat > "$dir/gunicorn.conf.py" <<EOF
wsgi_app = "$app"
proc_name = "$name"
bind = "$HOST_IP:$port"
workers = 1
threads = 8
timeout = 120
accesslog = "-"
control_socket_disable = True
EOF
    if ! running "$name"; then
        port_free "$name" "$port"
        launch "$name" env -C "$dir" PATH="$VENV/bin:$PATH" "$@" \
            "$VENV/bin/gunicorn"
    fi
    wait_for "$name" http_ok "http://$HOST_IP:$port/"
}

# The python of the virtualenv with the admin credentials.
os_python() {
    OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml OS_CLOUD=nova-lifecycle \
        SERVICES_PASSWORD=$PASSWORD HOST_IP=$HOST_IP \
        "$VENV/bin/python" - "$@"
}

# Service project, users, services and endpoints; idempotent.
setup_catalog() {
    os_python <<'EOF'
import os
import openstack

conn = openstack.connect()
ip = os.environ['HOST_IP']
pw = os.environ['SERVICES_PASSWORD']
idn = conn.identity
project = idn.find_project('service') or idn.create_project(
    name='service', domain_id='default')
roles = {}
for name in ('admin', 'service'):
    roles[name] = idn.find_role(name) or idn.create_role(name=name)
for user in ('glance', 'placement', 'nova', 'neutron'):
    u = idn.find_user(user, domain_id='default')
    if u is None:
        u = idn.create_user(name=user, password=pw, domain_id='default')
    else:
        idn.update_user(u, password=pw)
    for role in roles.values():
        idn.assign_project_role_to_user(project, u, role)
services = [('glance', 'image', 9292, ''), ('placement', 'placement', 8778, ''),
            ('nova', 'compute', 8774, '/v2.1'),
            ('neutron', 'network', 9696, '')]
for name, stype, port, path in services:
    svc = idn.find_service(name) or idn.create_service(name=name, type=stype)
    have = {e.interface for e in idn.endpoints(service_id=svc.id)}
    for interface in ('public', 'internal', 'admin'):
        if interface not in have:
            idn.create_endpoint(service_id=svc.id, interface=interface,
                                url='http://%s:%d%s' % (ip, port, path),
                                region_id='RegionOne')
EOF
}

start_keystone() {
    start_api keystone 5000 keystone.wsgi.api:application \
        OS_KEYSTONE_CONFIG_DIR="$ETC/keystone" \
        OS_KEYSTONE_CONFIG_FILES=keystone.conf
    once keystone-catalog setup_catalog
}

start_glance() {
    once glance-db "$VENV/bin/glance-manage" \
        --config-file "$ETC/glance/glance-api.conf" db_sync
    start_api glance 9292 glance.wsgi.api:application \
        OS_GLANCE_CONFIG_DIR="$ETC/glance"
}

start_placement() {
    once placement-db "$VENV/bin/placement-manage" \
        --config-file "$ETC/placement/placement.conf" db sync
    start_api placement 8778 placement.wsgi.api:application \
        OS_PLACEMENT_CONFIG_DIR="$ETC/placement"
}

start_neutron() {
    once neutron-db "$VENV/bin/neutron-db-manage" \
        --config-file "$ETC/neutron/neutron.conf" \
        --config-file "$ETC/neutron/ml2_conf.ini" upgrade heads
    start_api neutron 9696 neutron.wsgi.api:application \
        OS_NEUTRON_CONFIG_DIR="$ETC/neutron" \
        OS_NEUTRON_CONFIG_FILES="neutron.conf;ml2_conf.ini"
}

nova_manage() {
    "$VENV/bin/nova-manage" --config-file "$ETC/nova/nova-conductor.conf" "$@"
}

create_cell1() {
    nova_manage cell_v2 list_cells | grep -q ' cell1 ' \
        || nova_manage cell_v2 create_cell --name cell1
}

setup_nova_db() {
    once nova-api-db nova_manage api_db sync
    once nova-cell0 nova_manage cell_v2 map_cell0 \
        --database_connection "$(db_url nova | sed 's|/nova?|/nova_cell0?|')"
    once nova-cell1 create_cell1
    once nova-db nova_manage db sync
}

start_nova_api() {
    start_api nova-api 8774 nova.wsgi.osapi_compute:application \
        OS_NOVA_CONFIG_DIR="$ETC/nova" \
        OS_NOVA_CONFIG_FILES="api-paste.ini;nova-api.conf"
}

# start_nova <binary>: conductor, scheduler, compute. On nova 34 all three
# run in native threading by default (nova/monkey_patch.py: patch(backend=
# 'threading'), OS_NOVA_DISABLE_EVENTLET_PATCHING unset).
start_nova() {
    local name=$1
    if ! running "$name"; then
        launch "$name" env PATH="$VENV/bin:$PATH" "$VENV/bin/$name" \
            --config-file "$ETC/nova/$name.conf"
    fi
    wait_for "$name" log_has "$name" "Starting ${name#nova-} node"
    if log_has "$name" "oslo_service.backend._threading"; then
        say "$name runs in native threading mode"
    elif log_has "$name" "Eventlet based service backend"; then
        say "$name runs in eventlet mode"
    fi
}

# Map the compute host to cell1, then wait until the API lists it.
discover_compute() {
    local deadline found
    deadline=$((SECONDS + TIMEOUT))
    while true; do
        if nova_manage cell_v2 list_hosts 2>/dev/null | grep -q ' cell1 ' \
                && found=$(os_python 2>>"$LOGS/setup.log" <<'EOF'
import openstack
import sys
hv = list(openstack.connect().compute.hypervisors())
print(' '.join(h.name for h in hv))
sys.exit(0 if hv else 1)
EOF
                ); then
            break
        fi
        nova_manage cell_v2 discover_hosts >>"$LOGS/setup.log" 2>&1 || true
        running nova-compute || service_failed nova-compute "it exited"
        [ "$SECONDS" -lt "$deadline" ] || service_failed nova-compute \
            "no hypervisor listed after $TIMEOUT s of discover_hosts"
        sleep 1
    done
    HYPERVISOR=$found
}

# The test guest (a kernel and a busybox initramfs, direct kernel boot) as
# three images: kernel (aki), ramdisk (ari) and a 1 MiB raw root disk that
# names them. 512 MiB of RAM: with 128 MiB its kernel stalls while
# decompressing (tools/guest-domain.xml.template).
upload_guest() {
    local paths kernel initrd
    paths=$("$TOP/tools/build-test-guest.sh" 2>>"$LOGS/setup.log") \
        || fail "tools/build-test-guest.sh failed (see $LOGS/setup.log)"
    kernel=$(sed -n 1p <<< "$paths")
    initrd=$(sed -n 2p <<< "$paths")
    [ -s "$DATA/root.img" ] || truncate -s 1M "$DATA/root.img"
    os_python "$kernel" "$initrd" "$DATA/root.img" <<'EOF'
import sys
import openstack

conn = openstack.connect()
kernel, initrd, root = sys.argv[1:4]


def image(name, path, fmt, **props):
    found = conn.image.find_image(name)
    if found is not None and found.status == 'active':
        return found
    if found is not None:
        conn.image.delete_image(found)
    return conn.create_image(name, filename=path, disk_format=fmt,
                             container_format=fmt if fmt != 'raw' else 'bare',
                             visibility='public', wait=True, **props)


k = image('nova-lifecycle-guest-kernel', kernel, 'aki')
r = image('nova-lifecycle-guest-ramdisk', initrd, 'ari')
image('nova-lifecycle-guest', root, 'raw', kernel_id=k.id, ramdisk_id=r.id,
      os_command_line='console=ttyS0 quiet panic=0')
if conn.compute.find_flavor('lifecycle.tiny') is None:
    conn.compute.create_flavor(name='lifecycle.tiny', ram=512, vcpus=1,
                               disk=1)
EOF
}

# Each API answers; every nova service reports "up" (a restarted
# nova-compute does so at its first heartbeat, up to report_interval, 10 s,
# after its start).
check_apis() {
    os_python "$TIMEOUT" <<'EOF'
import sys
import time
import openstack

conn = openstack.connect()
token = conn.session.get_token()
images = [i.name for i in conn.image.images()]
hvs = [h.name for h in conn.compute.hypervisors()]
nets = list(conn.network.networks())
print('services: token %s... ; images %s ; hypervisors %s ; networks %d'
      % (token[:8], ', '.join(sorted(images)), ', '.join(hvs), len(nets)))
if 'nova-lifecycle-guest' not in images or not hvs:
    sys.exit('services: FAILED: the test image or the hypervisor is missing')
deadline = time.time() + float(sys.argv[1])
while True:
    down = sorted(s.binary for s in conn.compute.services() if s.state != 'up')
    if not down:
        break
    if time.time() > deadline:
        sys.exit('services: FAILED: nova services down: %s' % down)
    time.sleep(1)
EOF
}

libvirt_up() {
    if ! "$TOP/tools/libvirt-setup.sh" >>"$LOGS/libvirt-setup.log" 2>&1; then
        tail -n 20 "$LOGS/libvirt-setup.log" >&2
        fail "libvirtd did not start (tools/libvirt-setup.sh, above)"
    fi
}

do_up() {
    require_root
    mkdir -p "$ETC" "$LOGS" "$RUN" "$DATA" "$DONE"
    step "Debian packages (${APT_PACKAGES[*]})" install_packages
    if ! "$TOP/tools/libvirt-setup.sh" --status >/dev/null 2>&1; then
        touch "$RUN/libvirt.ours"
    fi
    step "libvirtd (tools/libvirt-setup.sh)" libvirt_up
    step "virtualenv $VENV" install_venv
    load_password
    step "configuration files" write_configs
    step "mariadb" start_mariadb
    step "databases and users" create_databases
    step "rabbitmq" start_rabbitmq
    step "rabbitmq user" create_rabbit_user
    step "keystone db_sync, fernet keys, bootstrap" setup_keystone
    step "keystone (and catalog, service users)" start_keystone
    step "glance" start_glance
    step "placement" start_placement
    step "neutron" start_neutron
    step "nova databases and cells" setup_nova_db
    step "nova-api" start_nova_api
    step "nova-conductor" start_nova nova-conductor
    step "nova-scheduler" start_nova nova-scheduler
    step "nova-compute" start_nova nova-compute
    HYPERVISOR=
    step "discover_hosts, hypervisor listed" discover_compute
    say "hypervisor: $HYPERVISOR"
    step "test guest images and flavor" upload_guest
    step "API check (token, images, hypervisors)" check_apis
    say "up in $(since "$START_ALL") s; use: . $STATE/openrc"
}

# ---------------------------------------------------------------- down

delete_servers() {
    running nova-api && running nova-compute || return 0
    os_python <<'EOF' || say "WARNING: deleting the servers failed"
import time
import openstack

conn = openstack.connect()
servers = list(conn.compute.servers(all_projects=True))
for s in servers:
    conn.compute.delete_server(s, force=True)
deadline = time.time() + 60
while servers and time.time() < deadline:
    servers = list(conn.compute.servers(all_projects=True))
    time.sleep(1)
print('services: %d server(s) left after delete' % len(servers))
EOF
}

# Domains whose disks are under the deployment's instances_path.
destroy_domains() {
    local dom
    command -v virsh >/dev/null || return 0
    for dom in $(virsh -q -c qemu:///system list --all --name 2>/dev/null); do
        if virsh -c qemu:///system dumpxml "$dom" 2>/dev/null \
                | grep -q "$DATA/nova/instances"; then
            say "destroying domain $dom"
            virsh -q -c qemu:///system destroy "$dom" >/dev/null 2>&1 || true
            virsh -q -c qemu:///system undefine --nvram "$dom" \
                >/dev/null 2>&1 || true
        fi
    done
}

# stop_pid <name> <pid>: TERM, wait up to $STOP_TIMEOUT s, KILL.
stop_pid() {
    local name=$1 pid=$2 deadline
    deadline=$((SECONDS + STOP_TIMEOUT))
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    if alive "$pid"; then
        say "$name (pid $pid) ignored SIGTERM for $STOP_TIMEOUT s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

# children <pid>: its descendants.
children() {
    local c
    for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        echo "$c"
        children "$c"
    done
}

stop_service() {
    local name=$1 pid kids t0=$EPOCHREALTIME
    pid=$(pid_of "$name")
    if [ -z "$pid" ]; then
        rm -f "$RUN/$name.pid"
        return 0
    fi
    kids=$(children "$pid")
    stop_pid "$name" "$pid"
    # Workers, privsep helpers, beam.smp: what outlived the parent.
    for pid in $kids; do
        alive "$pid" && stop_pid "$name" "$pid"
    done
    rm -f "$RUN/$name.pid"
    say "$(printf '%-44s %6s s' "stopped $name" "$(since "$t0")")"
}

# Processes of the deployment still alive: a command line naming the state
# directory or the virtualenv, or a working directory in the state
# directory (gunicorn's setproctitle overwrites its command line).
leftovers() {
    local f pid cwd skip=" " p=$BASHPID
    # Not this script nor the shells it runs from.
    while [ "${p:-0}" -gt 1 ]; do
        skip+="$p "
        p=$(awk '/^PPid:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
    done
    for f in /proc/[0-9]*; do
        pid=${f#/proc/}
        [[ "$skip" == *" $pid "* ]] && continue
        cwd=$(readlink "$f/cwd" 2>/dev/null) || cwd=
        if [[ "$cwd/" == "$STATE"/* ]] \
                || { tr '\0' '\n' < "$f/cmdline"; } 2>/dev/null \
                | grep -qF -e "$STATE" -e "$VENV"; then
            echo "$pid $({ tr '\0' ' ' < "$f/cmdline"; } 2>/dev/null \
                | cut -c1-100)"
        fi
    done
}

do_down() {
    require_root
    local name left
    [ -d "$STATE" ] || { say "nothing to stop ($STATE missing)"; return 0; }
    load_password
    step "servers deleted through the API" delete_servers
    step "libvirt domains of the deployment gone" destroy_domains
    for name in nova-compute nova-scheduler nova-conductor nova-api \
            neutron placement glance keystone; do
        stop_service "$name"
    done
    if running rabbitmq; then
        rabbit_env
        rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
    stop_service rabbitmq
    if [ -n "$(pid_of epmd)" ]; then
        stop_service epmd
    fi
    stop_service mariadb
    if [ -e "$RUN/libvirt.ours" ]; then
        # `up` started libvirtd: stop it too, leaving the machine as found.
        "$TOP/tools/libvirt-setup.sh" --stop
        rm -f "$RUN/libvirt.ours"
    fi
    # The next `up` starts nova-compute on the plugin again.
    rm -f "$STATE/$COMPUTE_CHOICE"
    left=$(leftovers)
    if [ -n "$left" ]; then
        echo "$left" >&2
        fail "processes of $STATE still running (above)"
    fi
    # The same by name, whoever started them: reported, not stopped.
    left=$(ps -eo pid=,comm=,args= | awk '$0 !~ /<defunct>/ && $2 ~ /^(mariadbd|mysqld|beam\.smp|epmd|erl_child_setup|inet_gethost|gunicorn|privsep-helper)$/ || $0 ~ /bin\/(nova|neutron|glance|keystone|placement)-/' | cut -c1-120)
    if [ -n "$left" ]; then
        say "process check: not ours, left running:"
        echo "$left"
    else
        say "process check: no mariadbd, beam.smp, epmd, gunicorn," \
            "privsep-helper or OpenStack service process runs"
    fi
    say "down in $(since "$START_ALL") s; no process of $STATE left"
}

# ---------------------------------------------------------------- status

# RSS in KiB of a process and its descendants.
rss_kb() {
    local p sum=0 r
    for p in "$1" $(children "$1"); do
        r=$(awk '/^VmRSS:/ { print $2 }' /proc/"$p"/status 2>/dev/null)
        sum=$((sum + ${r:-0}))
    done
    echo "$sum"
}

do_status() {
    local name pid rc=0 rss total=0
    for name in $SERVICES; do
        pid=$(pid_of "$name")
        if [ -n "$pid" ]; then
            rss=$(rss_kb "$pid")
            total=$((total + rss))
            printf '%-16s pid %-8s running  %6d MiB\n' "$name" "$pid" \
                $((rss / 1024))
        else
            printf '%-16s %-12s stopped\n' "$name" "-"
            rc=1
        fi
    done
    printf '%-16s %-21s %6d MiB\n' total "(RSS, with children)" \
        $((total / 1024))
    echo "nova-compute driver: $(compute_driver_class)" \
        "$(tail -n +2 "$STATE/$COMPUTE_CHOICE" 2>/dev/null | tr '\n' ' ')"
    return $rc
}

# One server through the API, as a user of the deployment would.
do_smoke() {
    running nova-api || fail "nova-api is not running: tools/services.sh up"
    load_password
    os_python "$TIMEOUT" <<'EOF'
import sys
import time
import openstack

conn = openstack.connect()
timeout = float(sys.argv[1])
compute = conn.compute


def timed(what, fn):
    t0 = time.time()
    fn()
    print('services: smoke: %-34s %6.1f s' % (what, time.time() - t0))


def wait(server, status):
    compute.wait_for_server(server, status=status, wait=timeout, interval=0.5)
    deadline = time.time() + timeout
    while compute.get_server(server).task_state is not None:
        if time.time() > deadline:
            sys.exit('services: FAILED: %s stays in a task state' % server.id)
        time.sleep(0.5)


image = conn.image.find_image('nova-lifecycle-guest', ignore_missing=False)
flavor = compute.find_flavor('lifecycle.tiny', ignore_missing=False)
box = {}


def boot():
    box['s'] = compute.create_server(name='services-smoke', image_id=image.id,
                                     flavor_id=flavor.id, networks='none')
    wait(box['s'], 'ACTIVE')


def guest_ready():
    # Its console (through the API): the guest's acpid now honours the
    # power button that a clean stop presses.
    deadline = time.time() + timeout
    while 'nova-lifecycle-guest: ready' not in compute.get_server_console_output(
            server).get('output', ''):
        if time.time() > deadline:
            sys.exit('services: FAILED: the guest did not boot')
        time.sleep(0.5)


timed('create (networks none) -> ACTIVE', boot)
server = box['s']
timed('guest ready on its console', guest_ready)
timed('stop -> SHUTOFF', lambda: (compute.stop_server(server),
                                  wait(server, 'SHUTOFF')))
timed('start -> ACTIVE', lambda: (compute.start_server(server),
                                  wait(server, 'ACTIVE')))
timed('delete -> gone', lambda: (compute.delete_server(server),
                                 compute.wait_for_delete(server, wait=timeout)))
EOF
}

# ---------------------------------------------------------------- one service

# wait_compute_up <epoch>: the API shows nova-compute up on a report made
# after <epoch> (a restarted one looks up on its last report of before for
# service_down_time, 60 s).
wait_compute_up() {
    os_python "$TIMEOUT" "$1" <<'EOF'
import datetime
import sys
import time
import openstack

conn = openstack.connect()
timeout, since = float(sys.argv[1]), float(sys.argv[2]) - 1


def reported(service):
    when = datetime.datetime.fromisoformat(service.updated_at or '1970-01-01')
    return when.replace(tzinfo=datetime.timezone.utc).timestamp()


deadline = time.time() + timeout
while True:
    try:
        fresh = [s for s in conn.compute.services()
                 if s.binary == 'nova-compute' and s.state == 'up'
                 and reported(s) >= since]
    except Exception:
        # The API's own database or queue may be coming back.
        fresh = []
    if fresh:
        break
    if time.time() > deadline:
        sys.exit('services: FAILED: the API does not show nova-compute up '
                 '%.0f s after its start' % timeout)
    time.sleep(0.5)
EOF
}

start_compute() {
    local t0=$EPOCHREALTIME
    start_nova nova-compute
    wait_compute_up "$t0" || service_failed nova-compute "not up in the API"
}

# compute-driver plugin|upstream [OPTION=VALUE...]: record the choice,
# rewrite the configuration, restart nova-compute alone.
do_compute_driver() {
    local driver=${1:-} opt t0=$EPOCHREALTIME
    require_root
    case "$driver" in
        plugin|upstream) ;;
        *) fail "compute-driver: plugin or upstream, not '$driver'" ;;
    esac
    shift
    for opt in "$@"; do
        [[ "$opt" =~ ^[a-z_]+=[^[:space:]]+$ ]] \
            || fail "compute-driver: '$opt' is not OPTION=VALUE"
    done
    running nova-conductor || fail "the deployment is not up" \
        "(tools/services.sh up)"
    load_password
    printf '%s\n' "$driver" "$@" > "$STATE/$COMPUTE_CHOICE"
    write_configs
    stop_service nova-compute
    step "nova-compute on $(compute_driver_class)" start_compute
    say "compute-driver $driver${*:+ ($*)} in $(since "$t0") s"
}

do_stop() {
    require_root
    case "${1:-}" in
        mariadb|nova-compute) stop_service "$1" ;;
        rabbitmq)
            if running rabbitmq; then
                rabbit_env
                rabbitmqctl -q stop >/dev/null 2>&1 || true
            fi
            stop_service rabbitmq
            ;;
        *) fail "stop: mariadb, rabbitmq or nova-compute, not '${1:-}'" ;;
    esac
}

do_start() {
    require_root
    load_password
    case "${1:-}" in
        mariadb) step "mariadb" start_mariadb ;;
        rabbitmq) step "rabbitmq" start_rabbitmq ;;
        nova-compute) step "nova-compute" start_compute ;;
        *) fail "start: mariadb, rabbitmq or nova-compute, not '${1:-}'" ;;
    esac
}

case "${1:-}" in
    up) do_up ;;
    down) do_down ;;
    status) do_status ;;
    smoke) do_smoke ;;
    compute-driver) shift; do_compute_driver "$@" ;;
    stop) do_stop "${2:-}" ;;
    start) do_start "${2:-}" ;;
    -h|--help|"")
        sed -n '15,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        ;;
    *) fail "unknown command '$1' (use up, down, status, smoke," \
        "compute-driver, stop or start)" ;;
esac
