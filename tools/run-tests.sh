#!/usr/bin/env bash
# The project's test suite, as CI runs it: style (pep8/hacking), the sample
# config, the unit tests (the compute_driver loader test among them) and the
# functional tests (nova's in-process deployment with the plugin as its
# compute driver) against nova 33 and nova 34, each in both of nova's
# concurrency modes (native threads, then eventlet); the integration tests
# on a real libvirtd + QEMU (needs root: it installs and starts them); then
# the OpenStack pieces (devstack plugin, Zuul config, release notes, docs).
# Sets up what it needs first (tools/install-deps.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
./tools/install-deps.sh

ENVS=${NOVA_LIFECYCLE_TEST_ENVS:-pep8,genconfig,py3-nova33,py3-nova34,functional-nova33,functional-nova34}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

status=0
.venv-tools/bin/tox -e "$ENVS" 2>&1 | tee "$log" || status=$?

if [ -z "${NOVA_LIFECYCLE_TEST_ENVS:-}" ]; then
    # The integration suite on a real libvirtd + QEMU (TCG) with the tiny
    # guest; here a missing hypervisor is a failure, not a skip.
    if ./tools/libvirt-setup.sh && ./tools/build-test-guest.sh; then
        NOVA_LIFECYCLE_REQUIRE_LIBVIRT=1 .venv-tools/bin/tox -e integration \
            2>&1 | tee -a "$log" || status=$?
    else
        echo "run-tests: could not set up libvirtd and the test guest" >&2
        status=1
    fi
    # devstack plugin (bashate), Zuul config (yamllint + schema), release
    # notes (reno lint + build) and docs (sphinx -W).
    ./tools/check-openstack-integration.sh || status=1
fi

# stestr prints a Totals block per run; add them up into one closing line.
count() { awk -v k="$1" '$1 == "-" && $2 == k":" {s += $3} END {print s + 0}' "$log"; }
passed=$(count Passed)
failed=$(count Failed)
skipped=$(count Skipped)
echo
echo "stestr runs: $(grep -c '^ - Passed: ' "$log" || true)"
echo "$passed passed, $failed failed, $skipped skipped"
if [ "$skipped" != 0 ]; then
    echo "run-tests: skipped tests are not allowed in CI" >&2
    status=1
fi
exit "$status"
