#!/usr/bin/env bash
# The main job: on a fresh Debian machine, as root, set up what it needs and
# run a single-host Nova in one process (API, conductor, scheduler,
# placement, SQLite, from Nova's functional-test fixtures) whose compute
# runs the plugin, then upstream's libvirt driver, through the same
# power-state scenarios via the REST API; for nova 34 and nova 33, each in
# native-threading and eventlet mode. Each run prints a table (plugin and
# upstream side by side) and writes a PNG plot of the latencies to
# build/mainjob/. See doc/source/mainjob.rst.
#
#   tools/main-job.sh                       Nova's fake libvirt (default;
#                                           needs only Python packages)
#   tools/main-job.sh --libvirt-uri qemu:///system
#                                           a real libvirtd + QEMU (TCG):
#                                           also starts libvirtd
#                                           (tools/libvirt-setup.sh),
#                                           builds the test guest
#                                           (tools/build-test-guest.sh) and
#                                           installs qemu-img (qemu-utils)
#
# Every other argument goes to `python -m mainjob` (e.g.
# --scenarios boot,soft-reboot). NOVA_LIFECYCLE_MAINJOB_ENVS chooses the tox
# environments (default: mainjob-nova34,mainjob-nova33; mainjob-nova32 and
# mainjob-nova31 run nova 32 and 31, in eventlet only). Exit status: 0 when
# every scenario passed on the plugin in every run; upstream's results are
# reported, never a failure.
set -euo pipefail

cd "$(dirname "$0")/.."

# Bad arguments stop here, before anything is installed or started
# (argparse names the argument; exit status 2).
python3 -m mainjob --check-args "$@" || exit 2

real=0
prev=
for arg in "$@"; do
    case "$prev:$arg" in
        *:--libvirt-uri=fake | --libvirt-uri:fake) ;;
        *:--libvirt-uri=* | --libvirt-uri:*) real=1 ;;
    esac
    prev=$arg
done

./tools/install-deps.sh
if [ "$real" -eq 1 ]; then
    ./tools/libvirt-setup.sh
    ./tools/build-test-guest.sh >/dev/null
    # Nova reads and converts the guest's images with qemu-img.
    if ! command -v qemu-img >/dev/null; then
        echo "main-job: apt-get install qemu-utils"
        if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                --no-install-recommends qemu-utils >/dev/null; then
            echo "main-job: FAILED: cannot install qemu-utils" >&2
            exit 1
        fi
    fi
fi

ENVS=${NOVA_LIFECYCLE_MAINJOB_ENVS:-mainjob-nova34,mainjob-nova33}
start=$SECONDS
status=0
.venv-tools/bin/tox -e "$ENVS" -- "$@" || status=$?
echo "main-job: $ENVS finished in $((SECONDS - start)) s"
if [ "$status" -ne 0 ]; then
    echo "main-job: FAILED (see the tables above)" >&2
fi
exit "$status"
