#!/usr/bin/env bash
# Sets up a real libvirtd + QEMU (qemu:///system) on a Debian 12 machine
# without systemd, for the integration tests (nova_lifecycle/tests/
# integration). Run as root. Idempotent: every step checks first.
#
#   tools/libvirt-setup.sh            install what is missing, configure,
#                                     start virtlogd and libvirtd, wait
#                                     until `virsh -c qemu:///system list`
#                                     answers (same as --start)
#   tools/libvirt-setup.sh --stop     stop the daemons this script started
#                                     (running guests are left alone; QEMU
#                                     processes survive libvirtd)
#   tools/libvirt-setup.sh --restart  stop and start libvirtd again (for
#                                     tests that restart it; about 2 to 4 s,
#                                     running guests survive); refuses a
#                                     libvirtd it did not start; starts
#                                     virtlogd if needed
#   tools/libvirt-setup.sh --status   exit 0 if qemu:///system answers
#
# What --start does:
#   1. apt-get install (DEBIAN_FRONTEND=noninteractive,
#      --no-install-recommends) of libvirt-daemon-system (it creates the
#      libvirt-qemu user the daemon resolves before reading qemu.conf),
#      libvirt-daemon-driver-qemu, libvirt-clients, qemu-system-x86 and
#      tini, when missing. The packages' init scripts are kept from starting anything
#      during the install (a temporary policy-rc.d when none exists).
#   2. /etc/libvirt/qemu.conf: the original is copied once to
#      qemu.conf.nova-lifecycle.orig; then the settings in QEMU_SETTINGS
#      below go between marker lines at the end of the file (any active
#      line of the same key above the block is commented out, as libvirt
#      takes the first one). Only what was proven needed: see
#      QEMU_SETTINGS.
#   3. mkdir -p /var/log/libvirt /var/run/libvirt; `virtlogd -d` (QEMU
#      domains fail to start without it: "Failed to connect socket to
#      '/run/libvirt/virtlogd-sock'") and libvirtd, each unless its pid
#      file names a live process of that name. libvirtd runs in the
#      foreground under `tini -s` (a child subreaper), detached with
#      setsid: QEMU processes, which libvirt daemonizes, then become tini's
#      children and are reaped as soon as they exit. Without a systemd-like
#      PID 1 they are left to the machine's PID 1, which on these machines
#      reaps late, and libvirt waits for the zombie before it sends STOPPED
#      (1.2 s after a guest's SHUTDOWN here; 0.2 s under tini). Where tini
#      is missing, `libvirtd -d`. The pids started here are recorded in
#      $STATE so that --stop only ever stops those.
#   4. waits (bounded, LIBVIRT_SETUP_TIMEOUT seconds, default 60) until
#      `virsh -c qemu:///system list` works.
# On any failure it prints the end of the daemon's log and, last, one line
# "libvirt-setup: FAILED: <reason>", and exits non-zero.
#
# Daemon logs: /var/log/libvirt/libvirtd.log (errors about dmidecode,
# dnsmasq, DBus and udev DMI there are harmless on these machines).
set -euo pipefail

PACKAGES=(
    libvirt-daemon-system
    libvirt-daemon-driver-qemu
    libvirt-clients
    qemu-system-x86
    tini
)
QEMU_CONF=/etc/libvirt/qemu.conf
QEMU_CONF_ORIG=$QEMU_CONF.nova-lifecycle.orig
BEGIN_MARK='# BEGIN nova-lifecycle tools/libvirt-setup.sh (managed block)'
END_MARK='# END nova-lifecycle tools/libvirt-setup.sh'
# Settings this script enforces in qemu.conf, one "key = value" per line.
# Checked one by one on Debian 12 (libvirt 9.0, QEMU 7.2, root, no
# systemd, cgroups v1 not delegated, /dev/kvm root-only):
# - user/group "root": needed. As libvirt-qemu (the default) every domain
#   start (virsh create) took 48 s instead of 0.3 s. Seen meanwhile: a
#   capabilities-probe thread (qmp-x86_64) in libvirtd and QEMU processes
#   of libvirt-qemu left as zombies of this machine's PID 1, which does not
#   reap them at once; most likely libvirt re-probes QEMU for that user
#   (/dev/kvm is root-only) and waits out its kill timeout on the zombie.
# - cgroup_controllers = [ ]: needed. On these machines' hybrid cgroups
#   libvirt guards each domain's devices with a BPF program in the unified
#   hierarchy, and loading it failed now and then while many domains
#   started at once ("failed to load cgroup BPF prog: Resource temporarily
#   unavailable", EAGAIN from the kernel, which libvirt does not retry;
#   twice in the integration suite's 200-domain storm). Leaving "devices"
#   out of the list did not stop it; no controllers does (libvirt then
#   logs "At least one cgroup controller is required", harmless). The test
#   domains need no cgroup limits.
# - security_driver = "none", dynamic_ownership = 0, remember_owner = 0:
#   not needed (the guest boots without them). Add a line here when a test
#   proves one.
QEMU_SETTINGS=(
    'user = "root"'
    'group = "root"'
    'cgroup_controllers = [ ]'
)
URI=qemu:///system
RUN_DIR=/var/run/libvirt
LOG_DIR=/var/log/libvirt
STATE=$RUN_DIR/nova-lifecycle-started
TIMEOUT=${LIBVIRT_SETUP_TIMEOUT:-60}

TOOL=libvirt-setup
# shellcheck source=tools/common.sh
. "$(dirname "$0")/common.sh"

show_log() {
    local log=$LOG_DIR/$1.log
    if [ -s "$log" ]; then
        echo "---- last lines of $log ----" >&2
        tail -n 15 "$log" >&2
        echo "----" >&2
    fi
}

# pid of a running daemon named $1 according to its pid file, or nothing.
daemon_pid() {
    local name=$1 pid
    for f in "/var/run/$name.pid" "$RUN_DIR/$name.pid"; do
        [ -r "$f" ] || continue
        pid=$(tr -dc '0-9' < "$f")
        if [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] \
                && [ "$(cat "/proc/$pid/comm")" = "$name" ]; then
            echo "$pid"
            return 0
        fi
    done
    # No (valid) pid file: look for the process itself.
    for f in /proc/[0-9]*/comm; do
        if [ "$(cat "$f" 2>/dev/null)" = "$name" ]; then
            pid=${f#/proc/}
            echo "${pid%/comm}"
            return 0
        fi
    done
}

virsh_ok() {
    timeout 10 virsh -q -c "$URI" list --all >/dev/null 2>&1
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"
}

install_packages() {
    local missing=() pkg policy_created=0
    for pkg in "${PACKAGES[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    say "apt-get install ${missing[*]}"
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Keep the packages' sysv init scripts from starting libvirtd:
        # this script starts (and knows) the daemons it runs.
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    export DEBIAN_FRONTEND=noninteractive
    local start=$SECONDS
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >/tmp/libvirt-setup-apt.log 2>&1; then
        # Stale package lists are the usual cause; refresh once and retry.
        apt-get update -qq >>/tmp/libvirt-setup-apt.log 2>&1 \
            || fail "apt-get update failed (see /tmp/libvirt-setup-apt.log)"
        apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            >>/tmp/libvirt-setup-apt.log 2>&1 \
            || fail "apt-get install ${missing[*]} failed" \
                    "(see /tmp/libvirt-setup-apt.log)"
    fi
    if [ "$policy_created" -eq 1 ]; then
        rm -f /usr/sbin/policy-rc.d
        trap - EXIT
    fi
    say "packages installed in $((SECONDS - start)) s"
}

append_block() {
    [ "${#QEMU_SETTINGS[@]}" -eq 0 ] && return 0
    {
        echo "$BEGIN_MARK"
        printf '%s\n' "${QEMU_SETTINGS[@]}"
        echo "$END_MARK"
    } >> "$1"
}

# Prints "changed" when qemu.conf was modified. Runs in a command
# substitution (no errexit there): every step is checked.
configure_qemu() {
    [ -f "$QEMU_CONF" ] || fail "$QEMU_CONF missing after install"
    if [ ! -e "$QEMU_CONF_ORIG" ]; then
        cp -p "$QEMU_CONF" "$QEMU_CONF_ORIG" \
            || fail "cannot back up $QEMU_CONF to $QEMU_CONF_ORIG"
    fi
    local tmp keys
    tmp=$(mktemp "$QEMU_CONF.XXXXXX") || fail "mktemp next to $QEMU_CONF"
    keys=$(printf '%s\n' "${QEMU_SETTINGS[@]+"${QEMU_SETTINGS[@]}"}" \
        | awk 'NF { print $1 }')
    # Drop our previous block, comment out active lines of our keys, append
    # the block again.
    if ! awk -v begin="$BEGIN_MARK" -v end="$END_MARK" -v keys="$keys" '
            BEGIN { n = split(keys, k, "\n"); for (i = 1; i <= n; i++) mine[k[i]] = 1 }
            $0 == begin { skip = 1; next }
            $0 == end { skip = 0; next }
            skip { next }
            {
                line = $0; sub(/^[ \t]+/, "", line)
                key = line; sub(/[ \t]*=.*/, "", key)
                if (line ~ /^[A-Za-z_]+[ \t]*=/ && (key in mine)) $0 = "#" $0
                print
            }' "$QEMU_CONF" > "$tmp" \
        || ! append_block "$tmp" \
        || [ ! -s "$tmp" ]; then
        rm -f "$tmp"
        fail "could not write the new $QEMU_CONF"
    fi
    if cmp -s "$tmp" "$QEMU_CONF"; then
        rm -f "$tmp"
        return 0
    fi
    chmod --reference="$QEMU_CONF" "$tmp" && mv "$tmp" "$QEMU_CONF" \
        || fail "could not replace $QEMU_CONF"
    echo changed
}

record_started() {
    local name=$1 pid=$2
    mkdir -p "$RUN_DIR"
    touch "$STATE"
    sed -i "/^$name /d" "$STATE"
    echo "$name $pid" >> "$STATE"
}

started_pid() {
    [ -r "$STATE" ] || return 0
    awk -v n="$1" '$1 == n { print $2 }' "$STATE" | tail -n 1
}

# True when daemon $1 runs and is the process this script started.
started_here() {
    local pid
    pid=$(daemon_pid "$1")
    [ -n "$pid" ] && [ "$pid" = "$(started_pid "$1")" ]
}

start_daemon() {
    local name=$1 pid deadline
    pid=$(daemon_pid "$name")
    if [ -n "$pid" ]; then
        say "$name already running (pid $pid)"
        return 0
    fi
    command -v "$name" >/dev/null || fail "$name not found in PATH"
    local rc=0
    if [ "$name" = libvirtd ] && command -v tini >/dev/null; then
        # See step 3 above: tini reaps the QEMU processes at once.
        # In the foreground libvirtd logs to stderr: into its usual file.
        setsid tini -s -- libvirtd </dev/null >>"$LOG_DIR/libvirtd.log" 2>&1 &
    else
        "$name" -d || rc=$?
    fi
    if [ "$rc" -ne 0 ]; then
        show_log "$name"
        fail "'$name -d' exited with $rc"
    fi
    deadline=$((SECONDS + 10))
    while [ -z "$(daemon_pid "$name")" ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log "$name"
            fail "$name did not stay up after '$name -d'"
        fi
        sleep 0.1
    done
    pid=$(daemon_pid "$name")
    record_started "$name" "$pid"
    say "started $name (pid $pid)"
}

stop_daemon() {
    local name=$1 pid deadline
    if ! started_here "$name"; then
        if [ -n "$(daemon_pid "$name")" ]; then
            say "$name was not started by this script; left running"
        fi
        [ -w "$STATE" ] && sed -i "/^$name /d" "$STATE"
        return 0
    fi
    pid=$(started_pid "$name")
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + 15))
    while [ -d "/proc/$pid" ] && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        say "$name (pid $pid) ignored SIGTERM for 15 s; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid)"
    sed -i "/^$name /d" "$STATE"
}

wait_for_libvirt() {
    local deadline
    deadline=$((SECONDS + TIMEOUT))
    until virsh_ok; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            show_log libvirtd
            local err
            err=$(timeout 10 virsh -q -c "$URI" list 2>&1 | head -n 1)
            fail "'virsh -c $URI list' still failing after ${TIMEOUT} s:" \
                 "${err:-no output}"
        fi
        if [ -z "$(daemon_pid libvirtd)" ]; then
            show_log libvirtd
            fail "libvirtd exited while starting"
        fi
        sleep 0.2
    done
}


do_start() {
    require_root "installs packages, starts libvirtd"
    install_packages
    local changed
    changed=$(configure_qemu)
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    if [ "$changed" = changed ] && [ -n "$(daemon_pid libvirtd)" ]; then
        if started_here libvirtd; then
            say "$QEMU_CONF changed: restarting libvirtd"
            stop_daemon libvirtd
        else
            say "WARNING: $QEMU_CONF changed but libvirtd was not" \
                "started by this script; restart it yourself"
        fi
    fi
    start_daemon virtlogd
    start_daemon libvirtd
    wait_for_libvirt
    local version
    version=$(virsh -c "$URI" version 2>/dev/null \
        | grep -E 'hypervisor' | sed 's/^ *//')
    say "ok: $version"
}

case "${1:---start}" in
    --start)
        do_start
        ;;
    --stop)
        require_root "installs packages, starts libvirtd"
        stop_daemon libvirtd
        stop_daemon virtlogd
        ;;
    --restart)
        require_root "installs packages, starts libvirtd"
        pid=$(daemon_pid libvirtd)
        if [ -n "$pid" ] && ! started_here libvirtd; then
            fail "libvirtd (pid $pid) was not started by this script;" \
                 "not restarting it"
        fi
        stop_daemon libvirtd
        do_start
        ;;
    --status)
        if virsh_ok; then
            say "$URI answers"
        else
            fail "'virsh -c $URI list' does not answer"
        fi
        ;;
    -h|--help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        ;;
    *)
        fail "unknown argument '$1' (use --start, --stop, --restart," \
             "--status)"
        ;;
esac
