"""One periodic power-state sync, plugin vs upstream, same run.

    python benchmarks/power_sync.py [--sizes 10,100,1000] [--repeats 3]
                                    [--call-cost-ms 0.0]

Nova's own ``ComputeManager._sync_power_states`` runs against Nova's fake
libvirt holding N running domains that match the database: once with
upstream's ``LibvirtDriver`` (one ``get_info`` per instance) and once with
``LibvirtLifecycleDriver`` and its hook (one bulk ``getAllDomainStats``).
Prints libvirt calls and wall time (median of the repeats) per N, and
their ratios upstream / plugin. The per-instance steps run one after the
other in both cases (the manager's pool is replaced by a list, as in the
unit tests), so the times compare work, not parallelism.

The fake costs nothing per call; ``--call-cost-ms`` adds that much to each
libvirt call to stand for libvirtd's RPC.
"""

import argparse
import os
import statistics
import sys
import time
import unittest

os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = 'true'

from nova_lifecycle import tests  # noqa: E402,F401 (concurrency mode)

from nova.compute import manager as compute_manager  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402

from nova_lifecycle.tests.unit import test_sync  # noqa: E402

ARGS = None
RESULTS = {}


class SyncBenchmark(test_sync.BulkSyncCallCountTest):
    """Builds the same world as the unit test, then measures."""

    def setUp(self):
        super().setUp()
        self.counter.cost = ARGS.call_cost_ms / 1000.0
        upstream_driver = libvirt_driver.LibvirtDriver(fake.FakeVirtAPI(),
                                                       False)
        upstream_driver._host.get_connection = lambda: self.conn
        self.upstream = compute_manager.ComputeManager()
        self.upstream.driver = upstream_driver

    def measure(self, manager):
        self.counter.reset()
        start = time.perf_counter()
        manager._sync_power_states(nova_context.get_admin_context())
        ran = self.spawns.run_all()
        elapsed = time.perf_counter() - start
        self.assertEqual(len(self.instances), ran)
        return self.counter.total(), elapsed

    def test_benchmark(self):
        for size in ARGS.sizes:
            self.add_instances(size - len(self.instances))
            for name, manager in (('upstream', self.upstream),
                                  ('plugin', self.compute)):
                runs = [self.measure(manager) for _ in range(ARGS.repeats)]
                RESULTS[(size, name)] = (
                    statistics.median(r[0] for r in runs),
                    statistics.median(r[1] for r in runs))


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10,100,1000',
                        type=lambda v: [int(x) for x in v.split(',')])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--call-cost-ms', type=float, default=0.0)
    ARGS = parser.parse_args()
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(
        SyncBenchmark('test_benchmark'))
    if not result.wasSuccessful():
        return 1
    print('periodic power-state sync, instances all in sync; libvirt call '
          'cost %.2f ms; medians of %d runs' % (ARGS.call_cost_ms,
                                                ARGS.repeats))
    print('%7s %14s %14s %12s %12s %10s %10s' % (
        'N', 'upstream calls', 'plugin calls', 'upstream s', 'plugin s',
        'calls x', 'time x'))
    for size in ARGS.sizes:
        up_calls, up_time = RESULTS[(size, 'upstream')]
        pl_calls, pl_time = RESULTS[(size, 'plugin')]
        print('%7d %14d %14d %12.4f %12.4f %9.1fx %9.1fx' % (
            size, up_calls, pl_calls, up_time, pl_time,
            up_calls / pl_calls, up_time / pl_time))
    return 0


if __name__ == '__main__':
    sys.exit(main())
