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

"""The event path on real libvirt-python with libvirt's test driver.

``test:///default`` runs inside the client library (no daemon) yet goes
through libvirt's real C event loop and callbacks, so these tests cover
what Nova's fake libvirt cannot: the native loop thread, waking it to
stop, and that a slow listener never holds it up.
"""

import threading

from nova import test
from nova.virt import event as virtevent
from nova.virt import fake

from nova_lifecycle import concurrency
from nova_lifecycle import conf  # noqa: F401 (registers [lifecycle])
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.virt import driver as lc_driver

WAIT = 10
DOMAIN_XML = """<domain type='test'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory>65536</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
</domain>"""


def uuid_of(n):
    return '00000000-0000-0000-0000-%012d' % n


class GatedListener(test_driver.Listener):
    """A listener that can be held at a gate before it records."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, event):
        self.gate.wait(WAIT)
        super().__call__(event)


class TestDriverEventPathTest(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.useFixture(lc_fixtures.LibvirtEvents())
        self.flags(connection_uri='test:///default', group='libvirt')
        self.flags(stopped_event_delay=60, dispatch_workers=2,
                   group='lifecycle')
        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.listener = GatedListener()
        self.driver.register_event_listener(self.listener)
        self.driver.event_path.start()
        self.driver._host.initialize()
        self.addCleanup(self.driver.cleanup_host, 'compute1')
        self.conn = self.driver._host.get_connection()

    def boot(self, n):
        return self.conn.createXML(
            DOMAIN_XML % {'name': 'd%d' % n, 'uuid': uuid_of(n)}, 0)

    def test_real_events_with_detail_and_reboot_cancel(self):
        dom = self.boot(1)
        self.assertTrue(self.listener.wait_for(1))
        # Destroy and start again: a hard reboot as libvirt reports it.
        dom.destroy()
        self.boot(1)
        self.assertTrue(self.listener.wait_for(2))
        ledger = lc_fixtures.PathCounts(self.driver.event_path)
        self.assertTrue(ledger.wait_settled(3, WAIT))
        self.assertEqual(
            [virtevent.EVENT_LIFECYCLE_STARTED] * 2,
            [e.transition for e in self.listener.events])
        self.assertEqual({'superseded by Started': 1},
                         self.driver.event_path.status().counts[
                             'cancelled_by_reason'])

    def test_blocked_listener_does_not_block_the_libvirt_loop(self):
        self.listener.gate.clear()
        for n in range(20):
            self.boot(n).destroy()
        # 40 callbacks arrived through libvirt's loop while every worker
        # was stuck in the listener.
        ledger = lc_fixtures.PathCounts(self.driver.event_path)
        self.assertTrue(ledger.wait_received(40, WAIT))
        self.assertEqual([], self.listener.events)
        self.listener.gate.set()
        self.assertTrue(self.listener.wait_for(20))
        self.assertEqual(20, len(self.driver.event_path.status().held))

    def test_cleanup_wakes_and_ends_the_loop_thread(self):
        self.assertIn('lifecycle-libvirt-loop',
                      concurrency.plugin_threads())
        self.driver.cleanup_host('compute1')
        self.assertEqual([], concurrency.plugin_threads())
