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

"""cleanup_host with nothing pending, plugin vs upstream, same run.

    python benchmarks/cleanup_host.py [--repeats 20]

Nova 34's manager calls ``thread_pool_factory.shutdown_all_executors()``
right after ``cleanup_host``, and Nova's test harness expects the driver's
``cleanup_host`` to return at once; the plugin's also ends its threads, so
this shows what that costs. Two set-ups, medians of the repeats, native
threads:

- Nova's harness: Nova's fake libvirt with ``Host._init_events`` mocked,
  as in Nova's own unit and functional tests (no event thread on either
  side);
- libvirt events on: real libvirt-python on ``test:///default`` (libvirt's
  C event loop, no daemon), ``Host._init_events`` as in nova-compute.
  Upstream's loop threads run until the benchmark ends them after the
  timed calls; the plugin's end within ``cleanup_host``.
"""

import argparse
import os
import statistics
import sys
import time
import unittest

os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = 'true'
# The main job (mainjob/, beside benchmarks/) is not installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from nova_lifecycle import tests  # noqa: E402,F401 (concurrency mode)

from nova import test  # noqa: E402
from nova.tests.fixtures import libvirt as fakelibvirt  # noqa: E402
from nova.virt import fake  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402

from mainjob import upstream as upstream_events  # noqa: E402
from nova_lifecycle import concurrency  # noqa: E402
from nova_lifecycle.virt import driver as lc_driver  # noqa: E402

ARGS = None
RESULTS = {}
DRIVERS = (('upstream', libvirt_driver.LibvirtDriver),
           ('plugin', lc_driver.LibvirtLifecycleDriver))


def timed_cleanup(driver_class, after=None):
    """Seconds one cleanup_host takes; ``after(driver)`` then runs untimed."""
    driver = driver_class(fake.FakeVirtAPI(), False)
    driver._host.initialize()
    driver._host.get_connection()
    start = time.monotonic()
    driver.cleanup_host('bench')
    elapsed = time.monotonic() - start
    if after is not None:
        after(driver)
    return elapsed


class HarnessBenchmark(test.NoDBTestCase):
    """Nova's fake libvirt, events off as in Nova's tests."""

    def setUp(self):
        super().setUp()
        self.useFixture(fakelibvirt.LibvirtFixture())

    def test_benchmark(self):
        for name, driver_class in DRIVERS:
            RESULTS[('harness', name)] = statistics.median(
                timed_cleanup(driver_class) for _ in range(ARGS.repeats))


class LibvirtEventsBenchmark(test.NoDBTestCase):
    """libvirt-python's test driver with libvirt's event loop running."""

    def setUp(self):
        super().setUp()
        # Host._init_events as in nova-compute; upstream's endless loops
        # are ended after the test (untimed) so the harness can shut down.
        self.useFixture(upstream_events.UpstreamEventThreads())
        self.flags(connection_uri='test:///default', group='libvirt')

    def test_benchmark(self):
        # One libvirt loop at a time, as in nova-compute: upstream's are
        # ended after each timed call.
        def end_upstream_threads(driver):
            if not upstream_events.UpstreamEventThreads.stop(driver._host):
                raise RuntimeError("upstream's libvirt loop did not end")

        for name, driver_class in DRIVERS:
            RESULTS[('events', name)] = statistics.median(
                timed_cleanup(driver_class, end_upstream_threads
                              if name == 'upstream' else None)
                for _ in range(ARGS.repeats))
        RESULTS['plugin threads left'] = concurrency.plugin_threads()


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=20)
    ARGS = parser.parse_args()
    suite = unittest.TestSuite([HarnessBenchmark('test_benchmark'),
                                LibvirtEventsBenchmark('test_benchmark')])
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=0).run(
        suite)
    if not result.wasSuccessful():
        return 1
    print('cleanup_host with nothing pending; medians of %d runs'
          % ARGS.repeats)
    print('%-36s %12s %12s' % ('', 'upstream ms', 'plugin ms'))
    for key, label in (('harness', "Nova's harness (events off)"),
                       ('events', 'libvirt events on (test:///)')):
        print('%-36s %12.3f %12.3f' % (
            label, RESULTS[(key, 'upstream')] * 1000,
            RESULTS[(key, 'plugin')] * 1000))
    print('plugin threads left: %s'
          % (', '.join(RESULTS['plugin threads left']) or 'none'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
