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

"""LibvirtLifecycleDriver on Nova's fake libvirt: the emitters end to end."""

import threading
from unittest import mock

import fixtures
from nova import test
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import event as virtevent
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import host as nova_host
import oslo_messaging as messaging

from nova_lifecycle import concurrency
from nova_lifecycle import conf  # noqa: F401 (registers [lifecycle])
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import loop as libvirt_loop
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.virt import driver as lc_driver
from nova_lifecycle.virt import host as lc_host

WAIT = 10
UUID = '11111111-2222-3333-4444-555555555555'
DOMAIN_XML = """<domain type='kvm'>
  <name>instance-00000001</name>
  <uuid>%s</uuid>
  <memory>1048576</memory>
  <vcpu>1</vcpu>
  <os><type>hvm</type></os>
  <devices/>
</domain>""" % UUID


def domain_xml(uuid, number):
    """DOMAIN_XML for another instance: its UUID, its name's number."""
    return DOMAIN_XML.replace(UUID, uuid).replace(
        'instance-00000001', 'instance-%08x' % number)


class Listener:
    """The compute manager's place: records events, signals each one."""

    def __init__(self):
        self.events = []
        self.threads = []
        self.cond = threading.Condition()

    def __call__(self, event):
        with self.cond:
            self.events.append(event)
            self.threads.append(threading.current_thread().name)
            self.cond.notify_all()

    def wait_for(self, count):
        with self.cond:
            return self.cond.wait_for(lambda: len(self.events) >= count,
                                      WAIT)


class DriverTestCase(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.useFixture(fixtures.Timeout(base.TEST_TIMEOUT, gentle=True))
        self.useFixture(fakelibvirt.LibvirtFixture())
        self.useFixture(lc_fixtures.LibvirtEvents())
        # Connection events enable or disable the compute service in the
        # DB; these tests have none.
        self.set_host_enabled = self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._set_host_enabled')).mock
        self.flags(stopped_event_delay=0.05, group='lifecycle')
        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.listener = Listener()

    def start_events(self):
        """What init_host does for events, without the rest of init_host."""
        self.driver.event_path.start()
        self.driver._host.initialize()
        self.addCleanup(self.driver.cleanup_host, 'compute1')
        return self.driver._host.get_connection()


class LoadedDriverTest(DriverTestCase):

    def test_is_a_libvirt_driver_with_upstreams_host(self):
        """The Host is the one upstream built, with the plugin's handler."""
        self.assertIsInstance(self.driver, libvirt_driver.LibvirtDriver)
        self.assertIs(nova_host.Host, type(self.driver._host))
        self.assertIs(self.driver._host, self.driver.vif_driver.host)
        self.assertIsInstance(self.driver._host._event_handler,
                              lc_host.LifecycleEventHandler)

    def test_upstreams_init_events_starts_the_plugins_handling(self):
        """Drift test of the three seams virt/host.py uses in the Host."""
        conn = self.start_events()
        # _get_new_connection registered the plugin's lifecycle callback.
        callback, opaque = conn._event_callbacks[
            fakelibvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE]
        self.assertIs(lc_host.lifecycle_callback, callback)
        self.assertIs(self.driver._host, opaque)
        # _init_events started the handler's loop...
        self.assertIn(libvirt_loop.THREAD_NAME, concurrency.plugin_threads())
        # ... and spawned the handler's connection-event loop.
        ran = threading.Event()
        self.driver._host._conn_event_handler_queue.put(ran.set)
        self.assertTrue(ran.wait(WAIT))

    def test_a_mocked_host_class_reaches_the_driver(self):
        """What patches ``host.Host`` patches the plugin's Host too."""
        with mock.patch('nova.virt.libvirt.host.Host') as host_class:
            driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                      False)
        self.assertIs(host_class.return_value, driver._host)

    def test_constructing_the_driver_starts_no_thread(self):
        before = threading.active_count()
        lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(), False)
        self.assertEqual(before, threading.active_count())
        self.assertEqual([], concurrency.plugin_threads())

    def test_options_reach_the_event_path(self):
        self.flags(stopped_event_delay=70, dispatch_workers=3,
                   group='lifecycle')
        made = []
        make_executor = concurrency.make_executor

        def recording(workers, name):
            made.append((workers, name))
            return make_executor(workers, name)

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.concurrency.make_executor', recording))
        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.assertEqual([(3, 'lifecycle-dispatch')], made)
        self.start_events()
        # A destroy held the full delay, read when it comes.
        self.driver.event_path.queue(libvirt_events.DomainLifecycleEvent(
            UUID, virtevent.EVENT_LIFECYCLE_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED))
        self.assertTrue(lc_fixtures.wait_received(self.driver.event_path, 1,
                                                  WAIT))
        (uuid, left), = self.driver.event_path.status().held
        self.assertEqual(UUID, uuid)
        self.assertGreater(left, 60)


class EventPathTest(DriverTestCase):

    def test_domain_event_reaches_listener_off_the_libvirt_thread(self):
        self.driver.register_event_listener(self.listener)
        conn = self.start_events()
        conn.createXML(DOMAIN_XML, 0)
        self.assertTrue(self.listener.wait_for(1))
        event = self.listener.events[0]
        self.assertIsInstance(event, virtevent.LifecycleEvent)
        self.assertEqual(UUID, event.uuid)
        self.assertEqual(virtevent.EVENT_LIFECYCLE_STARTED, event.transition)
        self.assertEqual('STARTED_BOOTED', event.detail_name)
        self.assertNotEqual(libvirt_loop.THREAD_NAME, self.listener.threads[0])

    def test_an_event_nova_failed_to_reach_the_conductor_with_is_retried(
            self):
        # RabbitMQ away: Nova's handler times out on its conductor call.
        self.flags(delivery_retry_interval=0.1, group='lifecycle')
        failures = []

        def conductor_away_once(event):
            if not failures:
                failures.append(event)
                raise messaging.MessagingTimeout('Timed out waiting for a '
                                                 'reply')
            self.listener(event)

        self.driver.register_event_listener(conductor_away_once)
        conn = self.start_events()
        conn.createXML(DOMAIN_XML, 0)
        self.assertTrue(self.listener.wait_for(1))
        self.assertIs(failures[0], self.listener.events[0])
        path = self.driver.event_path
        self.assertTrue(path.wait_for_counts(
            lambda c: c['delivered'] == 1 and c['pending'] == 0, WAIT))
        status = path.status()
        self.assertNotIn('MessagingTimeout', status.counts['failed_by_error'])
        self.assertEqual({'MessagingTimeout': 1}, status.retries)

    def test_stopped_waits_and_a_reboot_cancels_it(self):
        self.flags(stopped_event_delay=60, group='lifecycle')
        driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(), False)
        self.driver = driver
        driver.register_event_listener(self.listener)
        conn = self.start_events()
        dom = conn.createXML(DOMAIN_XML, 0)
        self.assertTrue(self.listener.wait_for(1))
        # A hard reboot as libvirt reports it.
        conn._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        conn._emit_lifecycle(dom, libvirt_events.DOMAIN_EVENT_RESUMED, 0)
        conn._emit_lifecycle(dom, libvirt_events.DOMAIN_EVENT_STARTED, 0)
        self.assertTrue(self.listener.wait_for(3))
        self.assertEqual(
            [virtevent.EVENT_LIFECYCLE_STARTED,
             virtevent.EVENT_LIFECYCLE_RESUMED,
             virtevent.EVENT_LIFECYCLE_STARTED],
            [e.transition for e in self.listener.events])
        self.assertTrue(lc_fixtures.wait_settled(driver.event_path, 4, WAIT))
        self.assertEqual({'superseded by Resumed': 1},
                         driver.event_path.status().counts[
                             'cancelled_by_reason'])

    def test_unregistered_listener_events_are_counted_not_lost(self):
        conn = self.start_events()
        self.driver.register_event_listener(self.listener)
        self.driver.register_event_listener(None)
        conn.createXML(DOMAIN_XML, 0)
        counts = lc_fixtures.PathCounts(self.driver.event_path)
        self.assertTrue(counts.wait_received(1, WAIT))
        self.assertTrue(counts.wait_settled(counts.received, WAIT))
        self.assertEqual([], self.listener.events)
        self.assertIn('no listener',
                      self.driver.event_path.status().counts[
                          'cancelled_by_reason'])

    def test_queue_event_accepts_events_from_any_thread(self):
        self.driver.register_event_listener(self.listener)
        self.start_events()
        event = virtevent.LifecycleEvent(UUID,
                                         virtevent.EVENT_LIFECYCLE_PAUSED)
        thread = concurrency.native_threading().Thread(
            target=self.driver.event_path.queue, args=(event,), name='caller')
        thread.start()
        thread.join(WAIT)
        self.assertTrue(self.listener.wait_for(1))
        self.assertIs(event, self.listener.events[0])

    def test_emit_event_delivers_synchronously(self):
        self.driver.register_event_listener(self.listener)
        event = virtevent.LifecycleEvent(UUID,
                                         virtevent.EVENT_LIFECYCLE_PAUSED)
        self.driver.emit_event(event)
        self.assertEqual([event], self.listener.events)

    def test_a_sync_without_a_listener_warns_once_when_events_are_off(self):
        self.flags(handle_virt_lifecycle_events=False, group='workarounds')
        self.start_events()
        self.assertEqual(0, self.driver.get_num_instances())
        self.assertEqual(0, self.driver.get_num_instances())
        output = self.stdlog.logger.output
        self.assertEqual(1, output.count(
            'handle_virt_lifecycle_events is False'))

    def test_no_warning_while_events_are_on(self):
        self.start_events()
        self.driver.get_num_instances()
        self.assertNotIn('handle_virt_lifecycle_events',
                         self.stdlog.logger.output)

    def test_emit_event_rejects_non_events(self):
        self.assertRaises(ValueError, self.driver.emit_event, 'not an event')

    def test_emit_event_logs_listener_failure(self):
        def broken(event):
            raise RuntimeError('handler broke')

        self.driver.register_event_listener(broken)
        self.driver.emit_event(virtevent.LifecycleEvent(
            UUID, virtevent.EVENT_LIFECYCLE_PAUSED))
        self.assertIn('handler broke', self.stdlog.logger.output)


class ConnectionAndShutdownTest(DriverTestCase):

    def test_connection_closed_then_reconnected_and_resynced(self):
        seen = []
        cond = threading.Condition()

        def set_host_enabled(*args):
            enabled, reason = args[-2:]
            with cond:
                seen.append((enabled, reason,
                             threading.current_thread().name))
                cond.notify_all()

        resynced = threading.Event()
        self.set_host_enabled.side_effect = set_host_enabled
        self.useFixture(fixtures.MockPatchObject(
            self.driver.power_sync, 'resync', side_effect=resynced.set))
        conn = self.start_events()
        with cond:
            self.assertTrue(cond.wait_for(lambda: len(seen) == 1, WAIT))
        # The initial connection: enabled, and no resync for it.
        self.assertTrue(seen[0][0])
        self.driver._host._close_callback(conn, 'libvirtd went away', None)
        with cond:
            self.assertTrue(cond.wait_for(lambda: len(seen) == 3, WAIT))
        enabled, reason, thread = seen[1]
        self.assertFalse(enabled)
        self.assertIn('libvirtd went away', reason)
        # On the Host's connection-event loop, not libvirt's thread.
        self.assertNotEqual(libvirt_loop.THREAD_NAME, thread)
        # Reconnected by the plugin, without waiting for a caller.
        self.assertTrue(seen[2][0])
        self.assertTrue(resynced.wait(WAIT))
        self.assertEqual(1, self.driver.power_sync.resync.call_count)

    def test_cleanup_host_stops_every_plugin_thread(self):
        self.flags(stopped_event_delay=3600, group='lifecycle')
        driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(), False)
        self.driver = driver
        driver.register_event_listener(self.listener)
        driver.event_path.start()
        driver._host.initialize()
        conn = driver._host.get_connection()
        dom = conn.createXML(DOMAIN_XML, 0)
        conn._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        self.assertTrue(lc_fixtures.wait_received(driver.event_path, 2, WAIT))
        self.assertIn(libvirt_loop.THREAD_NAME,
                      concurrency.plugin_threads())
        driver.cleanup_host('compute1')
        self.assertEqual([], concurrency.plugin_threads())
        stats = driver.event_path.status().counts
        self.assertEqual({'shutdown': 1}, stats['cancelled_by_reason'])
        self.assertEqual(0, stats['pending'])
        self.assertIn('Pending STOPPED event for instance %s dropped by '
                      'shutdown' % UUID, self.stdlog.logger.output)

    def test_concurrent_cleanup_host_calls(self):
        """Nova 34 may run cleanup_host on two threads at once."""
        self.start_events()
        errors = []

        def cleanup():
            try:
                self.driver.cleanup_host('compute1')
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=cleanup, name='stop-%d' % i)
                   for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        self.assertEqual([], errors)
        self.assertEqual([], concurrency.plugin_threads())
        # One line, however many calls.
        self.assertEqual(1, self.stdlog.logger.output.count(
            'nova-lifecycle stopped:'))
