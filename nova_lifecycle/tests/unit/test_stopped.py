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

"""Fast and safe STOPPED: driver operations, the grace and the re-check."""

import inspect
import logging
import threading

import fixtures
from nova import test
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import event as virtevent
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver

from nova_lifecycle import conf
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import operations
from nova_lifecycle.eventpath import policy
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.virt import driver as lc_driver
from nova_lifecycle.virt import tracked_methods

WAIT = 10
UUID = test_driver.UUID
RUNNING, SHUTOFF = 1, 5


class Instance:
    def __init__(self, uuid=UUID):
        self.uuid = uuid


class DriverOperationsTest(base.TestCase):

    def test_nested_operations_end_once(self):
        ended = []
        ops = operations.DriverOperations(
            on_idle=lambda uuid, name: ended.append((uuid, name)))
        with ops.track(UUID, 'reboot'):
            with ops.track(UUID, 'destroy'):
                self.assertEqual(['destroy', 'reboot'], ops.active(UUID))
            self.assertEqual(['reboot'], ops.active(UUID))
            self.assertEqual([], ended)
        self.assertEqual([(UUID, 'reboot')], ended)
        self.assertEqual([], ops.active(UUID))
        self.assertEqual({}, ops.busy())

    def test_failing_operation_still_ends(self):
        ended = []
        ops = operations.DriverOperations(
            on_idle=lambda uuid, name: ended.append(name))

        def fail():
            with ops.track(UUID, 'power_off'):
                raise RuntimeError('libvirt said no')

        self.assertRaises(RuntimeError, fail)
        self.assertEqual(['power_off'], ended)
        self.assertEqual({}, ops.busy())

    def test_end_of_the_last_operation_is_remembered_for_a_while(self):
        now = [100.0]
        ops = operations.DriverOperations(remember=10, clock=lambda: now[0])
        self.assertIsNone(ops.ended(UUID))
        with ops.track(UUID, 'reboot'):
            with ops.track(UUID, 'destroy'):
                pass
            # Nested end: the instance is still being operated on.
            self.assertIsNone(ops.ended(UUID))
        now[0] = 103.0
        self.assertEqual((3.0, 'reboot'), ops.ended(UUID))
        with ops.track(UUID, 'power_on'):
            self.assertIsNone(ops.ended(UUID))
        self.assertEqual((0.0, 'power_on'), ops.ended(UUID))
        now[0] = 114.0
        self.assertIsNone(ops.ended(UUID))

    def test_remembered_ends_are_pruned(self):
        now = [0.0]
        ops = operations.DriverOperations(remember=5, clock=lambda: now[0])
        for i in range(100):
            now[0] = float(i)
            with ops.track('uuid-%d' % i, 'destroy'):
                pass
        # Only the ends of the last 5 seconds are kept.
        self.assertEqual(6, len(ops._ended))
        self.assertEqual((0.0, 'destroy'), ops.ended('uuid-99'))
        self.assertIsNone(ops.ended('uuid-10'))

    def test_tracking_decorator_finds_the_instance_argument(self):
        seen = []

        class Base:
            def power_off(self, instance, timeout=0):
                seen.append(self.event_path.active(instance.uuid))

            def reboot(self, context, instance, network_info, reboot_type):
                seen.append(self.event_path.active(instance.uuid))

        @tracked_methods.tracking_operations
        class Driver(Base):
            def __init__(self):
                # DriverOperations has the EventPath's track().
                self.event_path = operations.DriverOperations()

        driver = Driver()
        driver.power_off(Instance(), timeout=3)
        driver.reboot(None, network_info=None, reboot_type='HARD',
                      instance=Instance())
        self.assertEqual([['power_off'], ['reboot']], seen)
        self.assertEqual({}, driver.event_path.busy())


class TrackedMethodsTest(base.TestCase):

    def test_every_tracked_method_is_nova_libvirt_drivers_and_wrapped(self):
        """Each name in TRACKED_METHODS is tracked on the plugin's driver.

        tracking_operations skips names the class lacks, so a Nova release
        that renamed one of these methods would silently stop tracking it.
        """
        for name in operations.TRACKED_METHODS:
            upstream = vars(libvirt_driver.LibvirtDriver).get(name)
            self.assertIsNotNone(upstream, name)
            ours = vars(lc_driver.LibvirtLifecycleDriver).get(name)
            self.assertIsNotNone(ours, name)
            self.assertEqual(inspect.getfullargspec(upstream),
                             inspect.getfullargspec(ours), name)

    def test_a_patch_of_upstreams_method_reaches_the_wrapper(self):
        """The base method is looked up per call, not kept from import."""
        calls = []

        def patched(self, instance, timeout=0, retry_interval=0):
            calls.append(self.event_path.active(instance.uuid))
            return 'patched'

        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.driver.LibvirtDriver.power_off', patched))
        driver = lc_driver.LibvirtLifecycleDriver.__new__(
            lc_driver.LibvirtLifecycleDriver)
        driver.event_path = operations.DriverOperations()
        self.assertEqual('patched', driver.power_off(Instance(), timeout=1))
        self.assertEqual([['power_off']], calls)

    def test_a_method_the_class_defines_itself_is_refused(self):
        class Base:
            def power_off(self, instance):
                pass

        class Driver(Base):
            def power_off(self, instance):
                pass

        self.assertRaises(TypeError, tracked_methods.tracking_operations,
                          Driver)

    def test_stopping_methods_are_tracked_ones(self):
        self.assertLessEqual(operations.STOPPING_METHODS,
                             set(operations.TRACKED_METHODS))


def stopped_event(detail, shutdown_detail=None, uuid=UUID):
    event = libvirt_events.DomainLifecycleEvent(
        uuid, virtevent.EVENT_LIFECYCLE_STOPPED,
        libvirt_events.DOMAIN_EVENT_STOPPED, detail)
    event.shutdown_detail = shutdown_detail
    return event


class StoppedPolicyTest(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.flags(stopped_event_delay=15, stopped_event_grace=2,
                   group='lifecycle')
        self.ops = operations.DriverOperations()
        self.live = {}
        self.policy = policy.StoppedPolicy(conf.CONF.lifecycle, self.ops,
                                           self.live_state)

    def live_state(self, uuid):
        state = self.live.get(uuid)
        if isinstance(state, Exception):
            raise state
        return state

    def test_hold_table(self):
        S, G, H = (
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_FINISHED,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST)
        IDLE, DURING, AFTER = 'no operation', 'during', 'just after'
        # (STOPPED detail, SHUTDOWN detail before it, driver operation)
        #   -> seconds held
        table = [
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, G, IDLE, 2),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, G, DURING, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, G, AFTER, 2),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, H, IDLE, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, H, DURING, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, H, AFTER, 2),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, S, IDLE, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, None, IDLE, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED, None, IDLE, 2),
            (libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED, None, DURING, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_FAILED, None, IDLE, 2),
            (libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED, None, IDLE, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED, None, DURING, 15),
            (libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED, None, AFTER, 2),
            (3, None, IDLE, 15),  # MIGRATED
            (3, None, AFTER, 2),
            (4, None, IDLE, 15),  # SAVED
        ]
        for detail, shutdown_detail, operation, expected in table:
            ops = operations.DriverOperations()
            table_policy = policy.StoppedPolicy(conf.CONF.lifecycle, ops,
                                                self.live_state)
            event = stopped_event(detail, shutdown_detail)
            if operation == DURING:
                with ops.track(UUID, 'reboot'):
                    got = table_policy.hold_for(event)
            else:
                if operation == AFTER:
                    with ops.track(UUID, 'destroy'):
                        pass
                got = table_policy.hold_for(event)
            self.assertEqual(expected, got,
                             (event.detail_name, shutdown_detail, operation))

    def test_stop_arriving_just_after_an_operation_gets_the_grace(self):
        # libvirt's loop or the dispatcher can run late: the STOPPED of a
        # destroy is taken in after destroy() returned.
        now = [50.0]
        self.ops = operations.DriverOperations(clock=lambda: now[0])
        self.policy = policy.StoppedPolicy(conf.CONF.lifecycle, self.ops,
                                           self.live_state)
        event = stopped_event(libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        self.assertEqual(15, self.policy.hold_for(event))
        with self.ops.track(UUID, 'destroy'):
            self.assertEqual(15, self.policy.hold_for(event))
        now[0] = 51.5
        self.assertEqual(2, self.policy.hold_for(event))
        # An operation that starts domains explains no STOPPED.
        with self.ops.track(UUID, 'spawn'):
            pass
        self.assertEqual(15, self.policy.hold_for(event))
        with self.ops.track(UUID, 'destroy'):
            pass
        # Another instance is not concerned.
        self.assertEqual(15, self.policy.hold_for(
            stopped_event(
                libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED, uuid='other')))
        # Past the delay it is no longer news of that operation.
        now[0] = 67.0
        self.assertEqual(15, self.policy.hold_for(event))

    def test_upstream_behaviour_when_disabled(self):
        self.flags(fast_stopped_events=False, group='lifecycle')
        event = stopped_event(libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED)
        self.assertEqual(15, self.policy.hold_for(event))
        self.assertIsNone(self.policy.after_operations())
        self.live[UUID] = RUNNING
        self.assertIsNone(self.policy.recheck(event))

    def test_grace_never_exceeds_the_delay(self):
        self.flags(stopped_event_delay=1, group='lifecycle')
        self.assertEqual(1, self.policy.hold_for(
            stopped_event(libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED)))
        self.assertEqual(1, self.policy.after_operations())

    def test_recheck_against_live_state(self):
        event = stopped_event(libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        for state, expected in [(1, 'domain is running again'),
                                (3, 'domain is paused again'),
                                (SHUTOFF, None), (6, None), (None, None)]:
            self.live[UUID] = state
            self.assertEqual(expected, self.policy.recheck(event))

    def test_recheck_error_delivers_with_a_warning(self):
        logs = self.useFixture(fixtures.FakeLogger(level=logging.WARNING))
        self.live[UUID] = fakelibvirt.libvirtError('connection reset')
        self.assertIsNone(self.policy.recheck(
            stopped_event(libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)))
        self.assertIn('connection reset', logs.output)
        self.assertIn(UUID, logs.output)


class DriverStoppedTest(test_driver.DriverTestCase):
    """Through the driver on Nova's fake libvirt."""

    def setUp(self):
        super().setUp()
        self.flags(stopped_event_delay=60, stopped_event_grace=0.05,
                   group='lifecycle')
        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.driver.register_event_listener(self.listener)
        self.conn = self.start_events()
        self.dom = self.conn.createXML(test_driver.DOMAIN_XML, 0)
        self.assertTrue(self.listener.wait_for(1))
        self.ledger = lc_fixtures.PathCounts(self.driver.event_path)

    def set_state(self, state):
        # Under eventlet the connection hands out tpool proxies; the fake
        # domain's state lives on the object behind the proxy.
        getattr(self.dom, '_obj', self.dom)._state = state

    def guest_stops(self, shutdown_detail):
        self.set_state(SHUTOFF)
        self.conn._emit_lifecycle(
            self.dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN, shutdown_detail)
        self.conn._emit_lifecycle(
            self.dom, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)

    def test_guest_powering_itself_off_is_delivered_after_the_grace(self):
        self.guest_stops(libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        self.assertTrue(self.listener.wait_for(2))
        event = self.listener.events[1]
        self.assertEqual(virtevent.EVENT_LIFECYCLE_STOPPED, event.transition)
        self.assertEqual(
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST, event.shutdown_detail)

    def test_host_requested_shutdown_waits_the_full_delay(self):
        self.guest_stops(libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST)
        self.assertTrue(self.ledger.wait_received(2, WAIT))
        (uuid, remaining), = self.driver.event_path.status().held
        self.assertEqual(UUID, uuid)
        self.assertGreater(remaining, 50)

    def test_stop_during_an_operation_is_rechecked_when_it_ends(self):
        release = threading.Event()
        inside = threading.Event()

        def slow_power_off(instance, timeout=0, retry_interval=0):
            inside.set()
            release.wait(WAIT)

        # The base method runs inside the tracking wrapper.
        self.useFixture(fixtures.MockPatchObject(
            self.driver, '_clean_shutdown', side_effect=slow_power_off))
        self.useFixture(fixtures.MockPatchObject(self.driver, '_destroy'))
        worker = threading.Thread(
            target=self.driver.power_off, args=(Instance(), 30, 1),
            name='power-off')
        worker.start()
        self.assertTrue(inside.wait(WAIT))
        self.assertEqual(['power_off'],
                         self.driver.event_path.status().operations.get(
                             UUID, []))
        self.guest_stops(libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        self.assertTrue(self.ledger.wait_received(2, WAIT))
        (uuid, remaining), = self.driver.event_path.status().held
        self.assertGreater(remaining, 50)
        release.set()
        worker.join(WAIT)
        # Ended: held for the grace, re-checked (still off), delivered.
        self.assertTrue(self.listener.wait_for(2))
        self.assertTrue(self.ledger.wait_settled(2, WAIT))
        self.assertEqual(2, self.ledger.snapshot()['delivered'])

    def test_stop_taken_in_after_its_operation_ended_gets_the_grace(self):
        with self.driver.event_path.track(UUID, 'destroy'):
            self.set_state(SHUTOFF)
        # The destroy's STOPPED reaches the event path only now.
        self.conn._emit_lifecycle(
            self.dom, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        # Delay 60 s, grace 0.05 s: delivered well within WAIT.
        self.assertTrue(self.listener.wait_for(2))
        self.assertEqual(virtevent.EVENT_LIFECYCLE_STOPPED,
                         self.listener.events[1].transition)
        self.assertTrue(self.ledger.wait_settled(2, WAIT))

    def test_stop_dropped_when_the_domain_runs_again(self):
        with self.driver.event_path.track(UUID, 'reboot'):
            self.guest_stops(libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST)
            self.assertTrue(self.ledger.wait_received(2, WAIT))
            # The reboot brought it back without a STARTED event reaching
            # us (e.g. it was lost).
            self.set_state(RUNNING)
        self.assertTrue(self.ledger.wait_settled(2, WAIT))
        stats = self.ledger.snapshot()
        self.assertEqual({'domain is running again': 1},
                         stats['cancelled_by_reason'])
        self.assertEqual(1, len(self.listener.events))
