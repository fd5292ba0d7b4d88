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

"""What libvirt calls cost on this machine's libvirtd, per call.

    python benchmarks/libvirt_call_cost.py [--sizes 10,100] [--rounds 5]
                                           [--bulk-repeats 30]
                                           [--uri qemu:///system]

Upstream's periodic power-state sync asks libvirt about each instance:
``Host.get_guest`` (``lookupByUUIDString``), then ``Guest.get_info``
(``virDomainGetInfo``, ``dom.info()``). The plugin asks once for every
domain: ``getAllDomainStats(VIR_DOMAIN_STATS_STATE)``. For N paused
transient domains (they run no guest; ``VIR_DOMAIN_START_PAUSED``) this
times each call against the real daemon and prints the medians in ms, the
per-instance cost upstream pays and the one bulk call, and the per-call
figure to give ``benchmarks/power_sync.py --call-cost-ms``.

Needs a libvirtd (``tools/libvirt-setup.sh``); takes the integration
tests' libvirtd lock exclusively while it measures, so that they do not
skew each other. The domains are named ``nlc-bench-*`` and are destroyed
at the end, whatever happens.
"""

import argparse
import concurrent.futures
import os
import statistics
import sys
import time
import uuid

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'true')

from nova_lifecycle import tests  # noqa: E402,F401 (concurrency mode)

from nova_lifecycle.tests.integration import base  # noqa: E402

libvirt = base.libvirt
# libvirt's VIR_DOMAIN_STATS_STATE, as the plugin asks for it.
STATS_STATE = 1
# Domains are created and destroyed by this many threads at once: destroy
# mostly waits for QEMU's exit to be reaped.
WORKERS = 16
THREAD_PREFIX = 'lifecycle-bench-domains'


def _ms(seconds):
    return seconds * 1000.0


def _timed(call, *args):
    start = time.perf_counter()
    result = call(*args)
    return time.perf_counter() - start, result


def create_domains(uri, count):
    """``count`` paused transient domains; their UUIDs."""
    uuids = [str(uuid.uuid4()) for _ in range(count)]

    def create(domain_uuid):
        conn = libvirt.open(uri)
        try:
            conn.createXML(base.MINIMAL_DOMAIN % {
                'name': 'nlc-bench-%s' % domain_uuid[:13],
                'uuid': domain_uuid}, libvirt.VIR_DOMAIN_START_PAUSED)
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(
            WORKERS, thread_name_prefix=THREAD_PREFIX) as pool:
        list(pool.map(create, uuids))
    return uuids


def destroy_domains(uri, uuids):
    def destroy(domain_uuid):
        conn = libvirt.open(uri)
        try:
            conn.lookupByUUIDString(domain_uuid).destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
        finally:
            conn.close()
        base.remove_qemu_log('nlc-bench-%s' % domain_uuid[:13])

    with concurrent.futures.ThreadPoolExecutor(
            WORKERS, thread_name_prefix=THREAD_PREFIX) as pool:
        list(pool.map(destroy, uuids))


def measure(conn, uuids, rounds, bulk_repeats):
    """Medians (s) of each call, over every domain and round."""
    lookups, infos, pairs, bulks = [], [], [], []
    returned = None
    for _ in range(rounds):
        for domain_uuid in uuids:
            lookup, dom = _timed(conn.lookupByUUIDString, domain_uuid)
            info, _ = _timed(dom.info)
            lookups.append(lookup)
            infos.append(info)
            pairs.append(lookup + info)
    for _ in range(bulk_repeats):
        bulk, records = _timed(conn.getAllDomainStats, STATS_STATE, 0)
        bulks.append(bulk)
        returned = len(records)
    return {
        'lookup': statistics.median(lookups),
        'info': statistics.median(infos),
        'pair': statistics.median(pairs),
        'bulk': statistics.median(bulks),
        'bulk_domains': returned,
        'call': statistics.median(lookups + infos),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10,100',
                        type=lambda v: [int(x) for x in v.split(',')])
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--bulk-repeats', type=int, default=30)
    parser.add_argument('--uri', default=base.URI)
    args = parser.parse_args()
    if libvirt is None:
        print('libvirt-python is not importable', file=sys.stderr)
        return 1
    libvirt.registerErrorHandler(base._quiet_error_handler, None)
    try:
        conn = libvirt.open(args.uri)
    except libvirt.libvirtError as exc:
        print('cannot connect to %s (run tools/libvirt-setup.sh): %s'
              % (args.uri, exc), file=sys.stderr)
        return 1
    results = {}
    uuids = []
    with base.DaemonLock(exclusive=True):
        try:
            for size in sorted(args.sizes):
                uuids += create_domains(args.uri, size - len(uuids))
                # One untimed pass: connection and daemon caches warm.
                measure(conn, uuids, 1, 1)
                results[size] = measure(conn, uuids, args.rounds,
                                        args.bulk_repeats)
        finally:
            destroy_domains(args.uri, uuids)
            conn.close()

    print('libvirt call cost on %s (libvirt %s), medians in ms; domains '
          'paused, %d rounds per domain, %d bulk calls'
          % (args.uri, _version(), args.rounds, args.bulk_repeats))
    print('%6s %10s %10s %14s %16s %12s %14s %10s' % (
        'N', 'lookup', 'info', 'per instance', 'upstream sync',
        'bulk call', 'bulk domains', 'per call'))
    for size in sorted(args.sizes):
        r = results[size]
        print('%6d %10.3f %10.3f %14.3f %16.2f %12.3f %14d %10.3f' % (
            size, _ms(r['lookup']), _ms(r['info']), _ms(r['pair']),
            _ms(r['pair']) * size, _ms(r['bulk']), r['bulk_domains'],
            _ms(r['call'])))
    every = [results[size]['call'] for size in args.sizes]
    print('per libvirt call (median of lookupByUUIDString and info, all '
          'N): %.3f ms  ->  python benchmarks/power_sync.py '
          '--call-cost-ms %.3f' % (_ms(statistics.median(every)),
                                   _ms(statistics.median(every))))
    return 0


def _version():
    major, rest = divmod(libvirt.getVersion(), 1000000)
    minor, micro = divmod(rest, 1000)
    return '%d.%d.%d' % (major, minor, micro)


if __name__ == '__main__':
    sys.exit(main())
