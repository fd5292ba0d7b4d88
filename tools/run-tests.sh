#!/usr/bin/env bash
# The project's test suite, as CI runs it: style (pep8/hacking), the sample
# config, the unit tests (the compute_driver loader test among them) and the
# functional tests (nova's in-process deployment with the plugin as its
# compute driver) against nova 33 and nova 34, each in both of nova's
# concurrency modes (native threads, then eventlet), and against nova 32
# and 31 in eventlet, their only mode for nova-compute; Nova's own libvirt
# test suites with the plugin in place of upstream's driver (conformance/);
# the integration tests on a real libvirtd + QEMU (needs root: it installs
# and starts them); the all-in-one main job on Nova's fake libvirt; a real
# single-host OpenStack (tools/services.sh: MariaDB, RabbitMQ, Keystone,
# Glance, Placement, Neutron, Nova 34 in native threads on the real
# libvirtd) with Tempest's server actions (all on the plugin, the
# power-state part on upstream's driver) and the main job's services
# scenarios on both drivers, beside a 60 s soak of the event path; then the OpenStack pieces (devstack plugin, Zuul config, release
# notes, docs). Sets up what it needs first (tools/install-deps.sh). Each
# step's time is printed at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
./tools/install-deps.sh

ENVS=${NOVA_LIFECYCLE_TEST_ENVS:-pep8,genconfig,py3-nova33,py3-nova34}
# The modules of nova.tests.functional.libvirt that CI runs on nova 33
# (all of them run on nova 34): power management, and cold and live
# migrations that patch upstream's driver methods (29 tests; test_vtpm's
# 98 are recorded too but left out for time).
CONFORMANCE_NOVA33_FUNCTIONAL='libvirt\.(test_power_manage|test_migration_addr|test_device_bus_migration)\.'
# On nova 34 CI runs the modules of the functional libvirt package that
# power, move and rebuild guests (57 of its 463 tests); those of hardware
# features (PCI, vTPM, NUMA, vGPU, SEV, TDX, UEFI, machine types, CPU
# traits, vPMEM, shares: about 15 of the package's 18 minutes here) reach
# the plugin only as upstream's driver class under another name. `tox -e
# conformance-nova34` and the Zuul job nova-lifecycle-conformance run all
# of it.
CONFORMANCE_NOVA34_FUNCTIONAL='libvirt\.(test_power_manage|test_evacuate|test_migration_addr|test_live_migration|test_device_bus_migration|test_vif_model|test_shared_resource_provider|test_rt_servers|test_reshape|test_rescue_deleted_base)\.'
# The main job's scenarios CI runs on the real services: on both drivers,
# side by side in one table; then on the plugin alone (upstream's
# nova-compute 34 in native threads never exits on SIGTERM and is killed
# after 90 s: doc/source/mainjob.rst).
SERVICES_SCENARIOS=${NOVA_LIFECYCLE_SERVICES_SCENARIOS:-guest-poweroff,rabbitmq-restart}
SERVICES_PLUGIN_SCENARIOS=${NOVA_LIFECYCLE_SERVICES_PLUGIN_SCENARIOS:-compute-sigterm}
# Tempest: the whole list on the plugin; on upstream's driver the sample
# of power-state tests, plus whatever failed on the plugin (set it to
# tools/tempest-tests.txt for the whole list on both).
: "${NOVA_LIFECYCLE_TEMPEST_UPSTREAM_TESTS:=tools/tempest-upstream-sample.txt}"
export NOVA_LIFECYCLE_TEMPEST_UPSTREAM_TESTS
log=$(mktemp)
trap 'rm -f "$log"' EXIT

status=0
timings=()
# record NAME START RC [OK-TEXT]: notes a step's time and outcome, and
# remembers a failure.
record() {
    local name=$1 start=$2 rc=$3 ok=${4:-ok}
    timings+=("$(printf '%-28s %4d s  %s' "$name" $((SECONDS - start)) \
        "$([ "$rc" -eq 0 ] && echo "$ok" || echo "FAILED ($rc)")")")
    if [ "$rc" -ne 0 ]; then
        status=1
    fi
}

# step NAME COMMAND...: runs it, output into the log, and records it
# without stopping the other steps.
step() {
    local name=$1 start=$SECONDS rc=0
    shift
    echo "run-tests: == $name"
    "$@" 2>&1 | tee -a "$log" || rc=$?
    record "$name" "$start" "$rc"
}

# in_release_env RELEASE COMMAND...: runs it in the tox py3 virtualenv of
# nova RELEASE, with the environment [testenv] sets.
in_release_env() {
    local venv=.tox/py3-nova$1
    shift
    env PATH="$PWD/$venv/bin:$PATH" VIRTUAL_ENV="$PWD/$venv" \
        PYTHONDONTWRITEBYTECODE=1 OS_STDOUT_CAPTURE=1 OS_STDERR_CAPTURE=1 \
        OS_LOG_CAPTURE=1 OS_TEST_TIMEOUT=160 "$@"
}

# in_modes RELEASE COMMAND...: runs it in the release's virtualenv in each
# concurrency mode nova-compute has there (native threads first, then
# eventlet; eventlet alone on nova 31 and 32), as tox's factors do; fails
# if either failed.
in_modes() {
    local release=$1 rc=0 modes=(true false)
    shift
    [ "$release" -ge 33 ] || modes=(false)
    for threads in "${modes[@]}"; do
        in_release_env "$release" env \
            OS_NOVA_DISABLE_EVENTLET_PATCHING="$threads" "$@" || rc=1
    done
    return "$rc"
}

step "tox $ENVS" .venv-tools/bin/tox -e "$ENVS"

if [ -z "${NOVA_LIFECYCLE_TEST_ENVS:-}" ]; then
    # The functional tests on nova 34 and 33, both modes, in the py3
    # virtualenvs tox built above (as `tox -e functional-nova3x` runs them,
    # without two more virtualenvs); so are the steps below that name a
    # release.
    for release in 34 33; do
        step "functional (nova $release)" in_modes "$release" \
            stestr --test-path=./nova_lifecycle/tests/functional run
    done
    # Nova's own test suites from the installed wheels, with the plugin in
    # place of upstream's driver, against upstream's recorded outcomes
    # (conformance/, doc/source/differences.rst). Nova 34: the whole
    # functional libvirt package (threading), the libvirt unit modules
    # and the compute manager's lifecycle tests in both modes. Nova 33,
    # in eventlet (nova-compute 33's mode; Nova's own harness does not
    # run its libvirt tests in threading there): the unit modules and a
    # sample of the functional package (CONFORMANCE_NOVA33_FUNCTIONAL);
    # the manager's tests in both modes.
    # They run in the py3 virtualenvs built above, as `tox -e
    # conformance-nova3x` does, without tox building them again.
    step "conformance (nova 34)" \
        in_release_env 34 python -m conformance.run unit compute
    step "conformance (nova 34 functional, sampled)" \
        in_release_env 34 python -m conformance.run functional \
        --filter "$CONFORMANCE_NOVA34_FUNCTIONAL"
    step "conformance (nova 33)" \
        in_release_env 33 python -m conformance.run unit compute
    step "conformance (nova 33 functional sample)" \
        in_release_env 33 python -m conformance.run functional \
        --filter "$CONFORMANCE_NOVA33_FUNCTIONAL"
    # Nova 32 (2025.2) and 31 (2025.1), in eventlet, their nova-compute's
    # one mode: tox builds the release's py3 virtualenv and runs the unit
    # tests; the functional tests, Nova's suites (the libvirt unit modules
    # and the manager's lifecycle tests) and the plugin's side of the main
    # job on Nova's fake libvirt then run in it, as `tox -e
    # functional-nova3x`, `conformance-nova3x` and `mainjob-nova3x --
    # --drivers plugin` would, without three more virtualenvs per release.
    for release in 32 31; do
        step "tox py3-nova$release" .venv-tools/bin/tox -e "py3-nova$release"
        step "functional (nova $release)" in_modes "$release" \
            stestr --test-path=./nova_lifecycle/tests/functional run
        step "conformance (nova $release)" \
            in_release_env "$release" python -m conformance.run unit compute
        step "main job (fake, nova $release)" in_modes "$release" \
            python -m mainjob --drivers plugin
    done
    # The integration suite on a real libvirtd + QEMU (TCG) with the tiny
    # guest; here a missing hypervisor is a failure, not a skip.
    if ./tools/libvirt-setup.sh && ./tools/build-test-guest.sh; then
        step "integration (real libvirtd)" in_modes 34 \
            env NOVA_LIFECYCLE_REQUIRE_LIBVIRT=1 \
            stestr --test-path=./nova_lifecycle/tests/integration run
    else
        echo "run-tests: could not set up libvirtd and the test guest" >&2
        status=1
    fi
    # The main job on Nova's fake libvirt, both modes, nova 34, the
    # plugin's side (the README's first command runs upstream's beside it,
    # on nova 34 and 33; here the drivers are compared by Tempest on the
    # real services below); nova 33's main job is left to the README's
    # first command, for CI minutes (the plugin's functional tests and the
    # conformance suites run on nova 33 above). The real libvirtd's main
    # job (`--libvirt-uri qemu:///system`) is left to it too: the services
    # below run the plugin on that libvirtd.
    step "main job (fake, nova 34)" in_modes 34 \
        python -m mainjob --drivers plugin
    # 60 s of sustained events per concurrency mode (as `tox -e
    # soak-nova34`, in nova 34's py3 virtualenv): the accounting
    # identity holds, threads and memory stay flat. It mostly sleeps, so it
    # runs beside the services steps, which saves CI minutes; its verdict
    # depends on growth, not on latency.
    soak_out=$(mktemp)
    soak_start=$SECONDS
    (
        for threads in true false; do
            env OS_NOVA_DISABLE_EVENTLET_PATCHING=$threads \
                .tox/py3-nova34/bin/python benchmarks/soak.py \
                --duration 60 || exit 1
        done
    ) >"$soak_out" 2>&1 &
    soak_pid=$!
    # A real single-host OpenStack (doc/source/services.rst) in this
    # clone's own state directory: Tempest's server actions on the plugin
    # and on upstream's driver, then the main job's services scenarios on
    # both drivers and on the plugin; `down` must leave no process behind.
    export NOVA_LIFECYCLE_SERVICES_DIR=$PWD/build/services
    step "services up (nova 34)" ./tools/services.sh up
    if ./tools/services.sh status >/dev/null 2>&1; then
        step "tempest (plugin; upstream sampled)" ./tools/tempest.sh run both
        step "main job (services, both drivers)" \
            "$NOVA_LIFECYCLE_SERVICES_DIR/venv/bin/python" -m mainjob \
            --deployment services --drivers plugin,upstream \
            --scenarios "$SERVICES_SCENARIOS"
        step "main job (services, plugin)" \
            "$NOVA_LIFECYCLE_SERVICES_DIR/venv/bin/python" -m mainjob \
            --deployment services --drivers plugin \
            --scenarios "$SERVICES_PLUGIN_SCENARIOS"
    else
        echo "run-tests: the services are not all up; Tempest and the" \
            "services scenarios did not run" >&2
        status=1
    fi
    step "services down" ./tools/services.sh down
    soak_rc=0
    wait "$soak_pid" || soak_rc=$?
    echo "run-tests: == soak (60 s x 2 modes, beside the steps above)"
    tee -a "$log" < "$soak_out"
    rm -f "$soak_out"
    record "soak (60 s x 2 modes)" "$soak_start" "$soak_rc" "ok, beside"
    # devstack plugin (bashate), Zuul config (yamllint + schema), release
    # notes (reno lint + build) and docs (sphinx -W).
    step "openstack integration" ./tools/check-openstack-integration.sh
fi

# stestr prints a Totals block per run; add them up into one closing line.
count() { awk -v k="$1" '$1 == "-" && $2 == k":" {s += $3} END {print s + 0}' "$log"; }
passed=$(count Passed)
failed=$(count Failed)
skipped=$(count Skipped)
echo
printf '%s\n' "${timings[@]}"
echo "stestr runs: $(grep -c '^ - Passed: ' "$log" || true)"
echo "$passed passed, $failed failed, $skipped skipped"
# Name what failed here, where the end of the output is what gets read.
grep -E '^\{[0-9]+\} .* \.\.\. FAILED$' "$log" | sed 's/^/failed: /' || true
grep -E '^ *[0-9.]+s \[plugin\] .*FAIL' "$log" | sed 's/^ */failed: main job /' || true
grep -E '^conformance: (unexpected difference|listed in)' "$log" \
    | sed 's/^conformance: /failed: conformance: /' || true
if [ "$skipped" != 0 ]; then
    echo "run-tests: skipped tests are not allowed in CI" >&2
    status=1
fi
exit "$status"
