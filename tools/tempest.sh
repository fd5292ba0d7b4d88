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
# Tempest against the deployment of tools/services.sh (run as root, with
# the deployment up): the server-action tests of tools/tempest-tests.txt,
# which need no guest network, no SSH into the guest and no block storage,
# once per compute driver. See doc/source/services.rst, "Tempest".
#
#   tools/tempest.sh install   Tempest in its own virtualenv (pinned, under
#                              constraints/upper-constraints-2026.2.txt),
#                              its workspace, a second flavor for resizes,
#                              tempest.conf for the deployment
#   tools/tempest.sh run plugin|upstream|both...
#                              install, then for each driver in turn:
#                              nova-compute restarted on it (services.sh
#                              compute-driver), the tests run, counts and
#                              time printed; last, the drivers compared.
#                              Exit 1 when a test failed on the plugin,
#                              passed on upstream but not on the plugin, or
#                              left a server behind
#   tools/tempest.sh list      the tests the list selects (no run)
#   tools/tempest.sh report    the comparison of the last runs again
#
# Results: $STATE/tempest/results/<driver>.{subunit,tsv,rss} and
# <driver>-nova-compute.log (that driver's part of nova-compute's log).
#
# Environment:
#   NOVA_LIFECYCLE_SERVICES_DIR   the deployment's state directory, as for
#                                 tools/services.sh
#   NOVA_LIFECYCLE_TEMPEST_VENV   Tempest's virtualenv; default
#                                 $STATE/tempest-venv
#   NOVA_LIFECYCLE_TEMPEST_TESTS  the test list; default
#                                 tools/tempest-tests.txt
#   NOVA_LIFECYCLE_TEMPEST_UPSTREAM_TESTS  the list upstream's driver runs;
#                                 default: the same list. A shorter one
#                                 (CI: tools/tempest-upstream-sample.txt)
#                                 gets the tests that failed on the plugin
#                                 in the same run added, so that each
#                                 failure is still compared
#   NOVA_LIFECYCLE_TEMPEST_CONCURRENCY  test workers (default 2)
#   NOVA_LIFECYCLE_TEMPEST_RSS_INTERVAL  seconds between two samples of
#                                 the deployment's RSS during a run (15)
#   PYTHON                        python for the virtualenv (python3)
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
STATE=$(realpath -m "${NOVA_LIFECYCLE_SERVICES_DIR:-/var/lib/nova-lifecycle-services}")
export NOVA_LIFECYCLE_SERVICES_DIR=$STATE
TVENV=${NOVA_LIFECYCLE_TEMPEST_VENV:-$STATE/tempest-venv}
TESTS=$(realpath "${NOVA_LIFECYCLE_TEMPEST_TESTS:-$TOP/tools/tempest-tests.txt}")
UPSTREAM_TESTS=$(realpath "${NOVA_LIFECYCLE_TEMPEST_UPSTREAM_TESTS:-$TESTS}")
CONCURRENCY=${NOVA_LIFECYCLE_TEMPEST_CONCURRENCY:-2}
RSS_INTERVAL=${NOVA_LIFECYCLE_TEMPEST_RSS_INTERVAL:-15}
PYTHON=${PYTHON:-python3}
CONSTRAINTS=$TOP/constraints/upper-constraints-2026.2.txt
SERVICES=$TOP/tools/services.sh
# The Tempest release tagged for OpenStack 2026.2 (its release note says
# so); tempest is branchless and not in upper-constraints.
TEMPEST_VERSION=47.0.0
TDIR=$STATE/tempest
WS=$TDIR/workspace
RESULTS=$TDIR/results
# The deployment's virtualenv: its openstacksdk looks up and creates what
# tempest.conf names.
SVENV=${NOVA_LIFECYCLE_SERVICES_VENV:-$STATE/venv}
ALT_FLAVOR=lifecycle.tiny.alt
GUEST_IMAGE=nova-lifecycle-guest-tempest
START_ALL=$EPOCHREALTIME

TOOL=tempest
# shellcheck source=tools/common.sh
. "$TOP/tools/common.sh"

require_deployment() {
    "$SERVICES" status >/dev/null 2>&1 \
        || fail "the deployment is not (fully) up: tools/services.sh up"
}

# ---------------------------------------------------------------- install

venv_stamp() {
    {
        echo "tempest==$TEMPEST_VERSION"
        sha256sum "$CONSTRAINTS" | cut -d' ' -f1
        "$PYTHON" -c 'import sys; print(sys.version)'
    } | sha256sum | cut -d' ' -f1
}

install_venv() {
    local stamp t0=$EPOCHREALTIME
    stamp=$(venv_stamp)
    if [ "$(cat "$TVENV/.nova-lifecycle-stamp" 2>/dev/null)" = "$stamp" ]; then
        say "virtualenv $TVENV: reused (tempest $TEMPEST_VERSION)"
        return 0
    fi
    mkdir -p "$TDIR"
    rm -rf "$TVENV"
    "$PYTHON" -m venv "$TVENV" \
        || fail "cannot create the virtualenv $TVENV with $PYTHON"
    "$TVENV/bin/pip" install -q -U pip >"$TDIR/pip.log" 2>&1 \
        || fail "pip upgrade failed (see $TDIR/pip.log)"
    "$TVENV/bin/pip" install -c "$CONSTRAINTS" "tempest==$TEMPEST_VERSION" \
        >>"$TDIR/pip.log" 2>&1 \
        || fail "pip install tempest failed (see $TDIR/pip.log)"
    "$TVENV/bin/pip" check >>"$TDIR/pip.log" 2>&1 \
        || fail "pip check: broken requirements (see $TDIR/pip.log)"
    echo "$stamp" > "$TVENV/.nova-lifecycle-stamp"
    say "virtualenv $TVENV: tempest $TEMPEST_VERSION installed in" \
        "$(since "$t0") s"
}

# The workspace: .stestr.conf pointing to the installed tempest, etc/,
# logs/; registered in a workspace file of its own, not in ~/.tempest.
init_workspace() {
    if [ ! -e "$WS/.stestr.conf" ]; then
        rm -rf "$WS"
        "$TVENV/bin/tempest" init --workspace-path "$TDIR/workspaces.yaml" \
            --name nova-lifecycle "$WS" >"$TDIR/init.log" 2>&1 \
            || fail "tempest init failed (see $TDIR/init.log)"
    fi
    mkdir -p "$WS/etc" "$WS/logs" "$WS/lock" "$RESULTS"
}

# The deployment's python with its admin credentials.
os_python() {
    OS_CLIENT_CONFIG_FILE=$STATE/clouds.yaml OS_CLOUD=nova-lifecycle \
        "$SVENV/bin/python" - "$@"
}

# Prints "<image id> <flavor id> <alt flavor id>": the test guest for
# Tempest, its flavor, and a larger one for the resizes (both created
# once). The guest is services.sh's, booted without "quiet": Tempest's
# console output tests want more than 3 lines, and with "quiet" the guest
# prints one.
lookup_resources() {
    os_python "$GUEST_IMAGE" "$ALT_FLAVOR" "$STATE/data/root.img" <<'EOF'
import sys
import openstack

conn = openstack.connect()
name, alt_name, root = sys.argv[1:4]
guest = conn.image.find_image('nova-lifecycle-guest', ignore_missing=False)
image = conn.image.find_image(name)
if image is not None and image.status != 'active':
    conn.image.delete_image(image)
    image = None
if image is None:
    image = conn.create_image(
        name, filename=root, disk_format='raw', container_format='bare',
        visibility='public', wait=True, kernel_id=guest.kernel_id,
        ramdisk_id=guest.ramdisk_id, os_command_line='console=ttyS0 panic=0')
flavor = conn.compute.find_flavor('lifecycle.tiny', ignore_missing=False)
alt = conn.compute.find_flavor(alt_name)
if alt is None:
    # As lifecycle.tiny (the guest needs 512 MiB under TCG) but larger, as
    # Tempest's resize tests expect of flavor_ref_alt.
    alt = conn.compute.create_flavor(name=alt_name, ram=640, vcpus=1,
                                     disk=2)
print(image.id, flavor.id, alt.id)
EOF
}

write_config() {
    local password ids image flavor alt
    password=$(cat "$STATE/password")
    ids=$(lookup_resources) || fail "cannot find the test guest or flavors"
    read -r image flavor alt <<< "$ids"
    (umask 077 && cat > "$WS/etc/tempest.conf" <<EOF
# Written by tools/tempest.sh for the deployment of tools/services.sh.
[DEFAULT]
log_dir = $WS/logs
log_file = tempest.log
[oslo_concurrency]
lock_path = $WS/lock

[auth]
# A project and users per test class, made with the admin credentials;
# no network for them (there is no agent to serve one): servers boot with
# no NIC, at the default microversion (2.1), as nova allows when the
# project sees no network.
use_dynamic_credentials = true
create_isolated_networks = false
admin_username = admin
admin_password = $password
admin_project_name = admin
admin_domain_name = Default

[identity]
uri_v3 = http://127.0.0.1:5000/v3
region = RegionOne

[compute]
image_ref = $image
image_ref_alt = $image
flavor_ref = $flavor
flavor_ref_alt = $alt
min_compute_nodes = 1
hypervisor_type = QEMU
build_timeout = 300
# No min/max_microversion: tests that need one are skipped (above 2.36
# a server needs a network or networks='none', which Tempest cannot ask
# for).

[compute-feature-enabled]
pause = true
suspend = true
shelve = true
shelve_migrate = false
rescue = true
stable_rescue = false
resize = true
snapshot = true
console_output = true
change_password = false
cold_migration = false
live_migration = false
interface_attach = false
vnc_console = false
spice_console = false
serial_console = false
personality = false
config_drive = false
metadata_service = false
attach_encrypted_volume = false
volume_multiattach = false
swap_volume = false

[service_available]
nova = true
glance = true
neutron = true
cinder = false
swift = false
horizon = false

[network-feature-enabled]
floating_ips = false

[validation]
# No SSH, no ping: the guest has no network.
run_validation = false
EOF
    )
    say "tempest.conf: image $image, flavors $flavor and $alt ($ALT_FLAVOR)"
}

do_install() {
    local t0=$EPOCHREALTIME
    require_root
    [ -s "$STATE/password" ] || fail "no deployment in $STATE" \
        "(tools/services.sh up)"
    install_venv
    init_workspace
    require_deployment
    write_config
    say "install in $(since "$t0") s"
}

# ---------------------------------------------------------------- run

tempest_cmd() {
    (cd "$WS" && TEMPEST_CONFIG_DIR=$WS/etc TEMPEST_CONFIG=tempest.conf \
        "$TVENV/bin/tempest" "$@")
}

do_list() {
    tempest_cmd run --list-tests --include-list "$TESTS" \
        | grep -E '^(tempest|setUpClass)' | sort || true
}

# The total RSS of the deployment (services.sh status) and of its QEMU
# guests, in MiB, every $RSS_INTERVAL s until killed.
sample_rss() {
    local total qemu
    while true; do
        total=$("$SERVICES" status 2>/dev/null \
            | awk '$1 == "total" { print $(NF - 1) }') || true
        qemu=$(ps -C qemu-system-x86_64 -o rss= 2>/dev/null \
            | awk '{ s += $1 } END { printf "%d", s / 1024 }') || true
        echo "$(date -u +%T) ${total:-0} ${qemu:-0}"
        sleep "$RSS_INTERVAL"
    done
}

# Servers, Tempest's projects and users, and images left over by a run
# (Tempest deletes all it made unless a test or its worker died). Deletes
# the servers, projects and users, so the next driver starts clean; exit
# status 1 when anything was left.
check_leftovers() {
    os_python <<'EOF'
import sys
import time
import openstack

conn = openstack.connect()
idn = conn.identity
servers = list(conn.compute.servers(all_projects=True))
projects = [p for p in idn.projects() if p.name.startswith('tempest-')]
users = [u for u in idn.users() if u.name.startswith('tempest-')]
images = [i.name for i in conn.image.images()
          if not i.name.startswith('nova-lifecycle-guest')]
print('tempest: left over: %d server(s), %d project(s) and %d user(s) of '
      'Tempest, %d other image(s)'
      % (len(servers), len(projects), len(users), len(images)))
for s in servers:
    print('tempest:   server %s %s %s' % (s.id, s.name, s.status))
    conn.compute.delete_server(s, force=True)
for name in images:
    print('tempest:   image %s' % name)
left = bool(servers or projects or users or images)
deadline = time.time() + 120
while servers and time.time() < deadline:
    servers = list(conn.compute.servers(all_projects=True))
    time.sleep(1)
for p in projects:
    print('tempest:   project %s' % p.name)
    idn.delete_project(p)
for u in users:
    idn.delete_user(u)
sys.exit(1 if left else 0)
EOF
}

# summarize <subunit> <tsv>: one line per test, "status<TAB>seconds<TAB>
# id<TAB>reason"; prints the counts.
summarize() {
    "$TVENV/bin/python" - "$1" "$2" <<'EOF'
import sys

import subunit
import testtools

rows = []


def record(test):
    status = test['status']
    if status in ('exists', 'inprogress'):
        return
    start, stop = test['timestamps']
    secs = (stop - start).total_seconds() if start and stop else 0.0
    reason = test['details'].get('reason')
    reason = reason.as_text().strip() if reason is not None else ''
    rows.append((status, secs, test['id'], ' '.join(reason.split())))


with open(sys.argv[1], 'rb') as f:
    stream = subunit.ByteStreamToStreamResult(f, non_subunit_name='stdout')
    result = testtools.StreamToDict(record)
    result.startTestRun()
    stream.run(result)
    result.stopTestRun()
with open(sys.argv[2], 'w') as out:
    for status, secs, test_id, reason in sorted(rows, key=lambda r: r[2]):
        out.write('%s\t%.1f\t%s\t%s\n' % (status, secs, test_id, reason))
counts = {}
for row in rows:
    counts[row[0]] = counts.get(row[0], 0) + 1
print('passed %d, failed %d, skipped %d (%s)' % (
    counts.get('success', 0),
    counts.get('fail', 0) + counts.get('uxsuccess', 0),
    counts.get('skip', 0),
    ', '.join('%s %d' % kv for kv in sorted(counts.items()))))
EOF
}

# test_list <driver>: the list file that driver runs. Upstream's is its
# own list plus, when that list is another, what failed on the plugin in
# its last run (one exact regular expression per test or class).
test_list() {
    local list=$RESULTS/$1.list
    if [ "$1" = plugin ] || [ "$UPSTREAM_TESTS" = "$TESTS" ]; then
        echo "$TESTS"
        return 0
    fi
    {
        cat "$UPSTREAM_TESTS"
        if [ -s "$RESULTS/plugin.tsv" ]; then
            # "setUpClass (<class>)" stands for the whole class.
            awk -F'\t' '$1 == "fail" || $1 == "uxsuccess" {
                id = $3; end = "\\["
                if (sub(/^setUpClass \(/, "", id)) {
                    sub(/\).*/, "", id); end = "\\."
                }
                sub(/\[.*/, "", id); gsub(/\./, "\\.", id)
                print id end }' "$RESULTS/plugin.tsv"
        fi
    } > "$list"
    echo "$list"
}

# run_driver <plugin|upstream>: sets DRIVER_RC (1: a test failed or a
# server was left).
run_driver() {
    local driver=$1 t0 t1 rc=0 logpos sampler peak list
    local log=$STATE/log/nova-compute.log
    DRIVER_RC=0
    say "==== $driver"
    t0=$EPOCHREALTIME
    "$SERVICES" compute-driver "$driver" | sed 's/^/  /'
    say "$(printf '%-36s %7s s' "nova-compute restarted on $driver" \
        "$(since "$t0")")"
    logpos=$(stat -c %s "$log")
    {
        echo "driver $driver"
        echo "tree $(git -C "$TOP" rev-parse HEAD 2>/dev/null)"
        git -C "$TOP" status --porcelain -- nova_lifecycle 2>/dev/null \
            | sed 's/^/changed /'
    } > "$RESULTS/$driver.tree"
    sample_rss > "$RESULTS/$driver.rss" &
    sampler=$!
    t1=$EPOCHREALTIME
    list=$(test_list "$driver")
    [ "$list" = "$TESTS" ] || say "$driver runs $(grep -c '^tempest' \
        "$list") tests of $list"
    tempest_cmd run --include-list "$list" --concurrency "$CONCURRENCY" \
        > "$RESULTS/$driver.out" 2>&1 || rc=$?
    say "$(printf '%-36s %7s s' "tempest run ($CONCURRENCY workers)" \
        "$(since "$t1")")"
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    tail -c +$((logpos + 1)) "$log" > "$RESULTS/$driver-nova-compute.log"
    (cd "$WS" && "$TVENV/bin/stestr" last --subunit) \
        > "$RESULTS/$driver.subunit"
    say "$driver: $(summarize "$RESULTS/$driver.subunit" \
        "$RESULTS/$driver.tsv")"
    awk -F'\t' '$1 == "fail" || $1 == "uxsuccess" {
        print "tempest:   FAILED  " $3 }' "$RESULTS/$driver.tsv"
    awk -F'\t' '$1 == "skip" {
        print "tempest:   skipped " $3 " (" $4 ")" }' "$RESULTS/$driver.tsv"
    peak=$(awk '{ t = $2 + $3; if (t > m) { m = t; a = $2; b = $3 } }
        END { printf "%d MiB (services %d, QEMU %d)", m, a, b }' \
        "$RESULTS/$driver.rss")
    say "$driver: peak RSS during the run: $peak;" \
        "nova-compute log: $(grep -c ' ERROR ' \
        "$RESULTS/$driver-nova-compute.log" || true) ERROR line(s)"
    if [ "$rc" -ne 0 ]; then
        DRIVER_RC=1
        say "$driver: tempest exited $rc (output: $RESULTS/$driver.out)"
    fi
    check_leftovers || DRIVER_RC=1
    say "$(printf '%-36s %7s s' "$driver in all" "$(since "$t0")")"
}

# Plugin against upstream, from the last results of each. Exit status 1
# when a test failed on the plugin (or passed on upstream only).
do_report() {
    [ -s "$RESULTS/plugin.tsv" ] || { say "no plugin results"; return 0; }
    local tsv=$RESULTS
    "$TVENV/bin/python" - "$tsv/plugin.tsv" "$tsv/upstream.tsv" <<'EOF'
import os
import sys


def load(path):
    if not os.path.exists(path):
        return None
    res = {}
    with open(path) as f:
        for line in f:
            status, _secs, test_id, reason = line.rstrip('\n').split('\t')
            res[test_id.split('[')[0]] = (status, reason)
    return res


plugin, upstream = load(sys.argv[1]), load(sys.argv[2])
bad = sorted(t for t, (s, _r) in plugin.items() if s in ('fail', 'uxsuccess'))
for t in bad:
    up = upstream.get(t, ('not run', ''))[0] if upstream else 'not run'
    print('tempest: compare: FAILED on the plugin (upstream: %s): %s'
          % (up, t))
if upstream is not None:
    # Upstream may run a sample of the plugin's list: tests it did not run
    # are counted, not compared.
    for t in sorted(upstream):
        p = plugin.get(t, ('not run', ''))[0]
        u = upstream[t][0]
        if p != u and 'fail' not in (p, u):
            print('tempest: compare: %s on the plugin, %s on upstream: %s'
                  % (p, u, t))
        elif u == 'fail' and p == 'success':
            print('tempest: compare: failed on upstream only: %s' % t)
    same = sum(1 for t in upstream
               if upstream[t][0] == plugin.get(t, ('',))[0])
    print('tempest: compare: %d of %d tests run on both drivers end the same'
          % (same, len(upstream)))
    only = len(set(plugin) - set(upstream))
    if only:
        print('tempest: compare: %d more ran on the plugin only (upstream '
              'ran a sample)' % only)
sys.exit(1 if bad else 0)
EOF
}

do_run() {
    local driver drivers=() rc=0 failed=""
    require_root
    [ "$#" -gt 0 ] || fail "run: name a driver: plugin, upstream or both"
    for driver in "$@"; do
        case "$driver" in
            plugin|upstream) drivers+=("$driver") ;;
            both) drivers+=(plugin upstream) ;;
            *) fail "run: plugin, upstream or both, not '$driver'" ;;
        esac
    done
    do_install
    for driver in "${drivers[@]}"; do
        rm -f "$RESULTS/$driver".*
    done
    for driver in "${drivers[@]}"; do
        run_driver "$driver"
        if [ "$DRIVER_RC" -ne 0 ]; then
            failed+=" $driver"
        fi
    done
    if [ "${drivers[-1]}" != plugin ]; then
        say "back to the plugin"
        "$SERVICES" compute-driver plugin | sed 's/^/  /'
    fi
    do_report || rc=1
    # Upstream's own failures are reported, not held against the plugin.
    if [[ " $failed " == *" plugin "* ]]; then
        rc=1
    fi
    say "done in $(since "$START_ALL") s; results in $RESULTS"
    [ -z "$failed" ] || say "failures or leftovers on:$failed"
    return $rc
}

case "${1:-}" in
    install) do_install ;;
    run) shift; do_run "$@" ;;
    list) do_list ;;
    report) do_report ;;
    -h|--help|"")
        sed -n '15,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        ;;
    *) fail "unknown command '$1' (use install, run, list or report)" ;;
esac
