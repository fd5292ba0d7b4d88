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

"""One periodic power-state sync, plugin vs upstream, same run.

    python benchmarks/power_sync.py [--sizes 10,100,1000] [--repeats 3]
                                    [--call-cost-ms 0.0]

Nova's own ``ComputeManager._sync_power_states`` runs against Nova's fake
libvirt holding N running domains, and a real database (Nova's sqlite test
database) holding the N matching instance rows: once with upstream's
``LibvirtDriver`` (one ``get_info`` per instance, each row refreshed) and
once with ``LibvirtLifecycleDriver`` and its hook (one bulk
``getAllDomainStats``; rows that agree with it and leave Nova nothing to do
are not read again). Prints libvirt calls, row reads and wall time (median
of the repeats) per N, and the ratios upstream / plugin. The per-instance
steps run one after the other in both cases (the manager's pool is replaced
by a list), so the times compare work, not parallelism.

The fake costs nothing per call; ``--call-cost-ms`` adds that much to each
libvirt call to stand for libvirtd's RPC (``libvirt_call_cost.py`` measures
it on a real libvirtd).
"""

import argparse
import os
import statistics
import sys
import time
import unittest

os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = 'true'

from nova_lifecycle import tests  # noqa: E402,F401 (concurrency mode)

import fixtures  # noqa: E402
from nova.compute import manager as compute_manager  # noqa: E402
from nova.compute import power_state  # noqa: E402
from nova.compute import vm_states  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import objects  # noqa: E402
from nova import test  # noqa: E402
from nova.tests.fixtures import libvirt as fakelibvirt  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402

from nova_lifecycle.tests.unit import test_driver  # noqa: E402
from nova_lifecycle.tests.unit import test_sync  # noqa: E402
from nova_lifecycle.virt import driver as lc_driver  # noqa: E402

ARGS = None
RESULTS = {}


class SyncBenchmark(test.TestCase):
    """N instances in the database and as domains; one sync per run."""

    REQUIRES_LOCKING = True

    def setUp(self):
        super().setUp()
        self.useFixture(fakelibvirt.LibvirtFixture())
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._set_host_enabled'))
        self.spawns = self.useFixture(test_sync.DeferredSpawn())
        self.counter = self.useFixture(test_sync.CallCounter(
            ARGS.call_cost_ms / 1000.0))
        self.refreshes = 0
        refresh = objects.Instance.refresh

        def counted_refresh(instance, *args, **kwargs):
            self.refreshes += 1
            return refresh(instance, *args, **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.objects.Instance.refresh', counted_refresh))
        self.context = nova_context.get_admin_context()

        driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(), False)
        self.plugin = compute_manager.ComputeManager()
        self.plugin.driver = driver
        driver.event_path.start()
        driver._host.initialize()
        self.addCleanup(driver.cleanup_host, self.plugin.host)
        driver.register_event_listener(self.plugin.handle_events)
        # Events of the domains created below are not this benchmark's.
        self.useFixture(fixtures.MockPatchObject(self.plugin,
                                                 'handle_events'))
        self.conn = driver._host.get_connection()

        upstream_driver = libvirt_driver.LibvirtDriver(fake.FakeVirtAPI(),
                                                       False)
        upstream_driver._host.get_connection = lambda: self.conn
        self.upstream = compute_manager.ComputeManager()
        self.upstream.driver = upstream_driver
        self.spawns.also_for(self.plugin, self.upstream)
        self.count = 0

    def add_instances(self, count):
        for _ in range(count):
            n = self.count
            self.count += 1
            uuid = '00000000-0000-0000-0000-%012d' % n
            self.conn.createXML(test_driver.domain_xml(uuid, n), 0)
            objects.Instance(
                context=self.context, uuid=uuid, host=self.plugin.host,
                vm_state=vm_states.ACTIVE,
                power_state=power_state.RUNNING, task_state=None,
                user_id='fake-user', project_id='fake-project',
                shutdown_terminate=False).create()

    def measure(self, manager):
        self.counter.reset()
        self.refreshes = 0
        start = time.perf_counter()
        manager._sync_power_states(self.context)
        ran = self.spawns.run_all()
        elapsed = time.perf_counter() - start
        self.assertEqual(self.count, ran)
        return self.counter.total(), self.refreshes, elapsed

    def test_benchmark(self):
        for size in ARGS.sizes:
            self.add_instances(size - self.count)
            for name, manager in (('upstream', self.upstream),
                                  ('plugin', self.plugin)):
                runs = [self.measure(manager) for _ in range(ARGS.repeats)]
                RESULTS[(size, name)] = tuple(
                    statistics.median(r[i] for r in runs) for i in range(3))


def main(argv=None):
    """Runs the sync benchmark; 0 when it ran, its rows in RESULTS."""
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='10,100,1000',
                        type=lambda v: [int(x) for x in v.split(',')])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--call-cost-ms', type=float, default=0.0)
    ARGS = parser.parse_args(argv)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(
        SyncBenchmark('test_benchmark'))
    if not result.wasSuccessful():
        return 1
    print('periodic power-state sync, instances all in sync, sqlite '
          'database; libvirt call cost %.3f ms; medians of %d runs' % (
              ARGS.call_cost_ms, ARGS.repeats))
    print('%6s %15s %15s %10s %10s %10s %10s' % (
        'N', 'libvirt calls', 'row reads', 'upstream s', 'plugin s',
        'calls x', 'time x'))
    print('%6s %15s %15s' % ('', 'upstr / plugin', 'upstr / plugin'))
    for size in ARGS.sizes:
        up_calls, up_reads, up_time = RESULTS[(size, 'upstream')]
        pl_calls, pl_reads, pl_time = RESULTS[(size, 'plugin')]
        print('%6d %7d / %5d %7d / %5d %10.4f %10.4f %9.1fx %9.1fx' % (
            size, up_calls, pl_calls, up_reads, pl_reads, up_time, pl_time,
            up_calls / pl_calls, up_time / pl_time))
    return 0


if __name__ == '__main__':
    sys.exit(main())
