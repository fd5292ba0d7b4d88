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

"""Clean guest shutdown on Nova's fake libvirt, with guests that behave."""

import time

import fixtures
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import event as virtevent

from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import stop_waiters
from nova_lifecycle.tests.unit import test_driver

WAIT = 10
UUID = test_driver.UUID
RUNNING, SHUTOFF = 1, 5


class Guest:
    """How the fake guest answers ACPI power-button presses.

    :param ignore: presses ignored before one is honoured (None: all).
    :param after: seconds from the honoured press to the domain being off.
    :param lose_event: power off without libvirt sending the events.
    :param fail: presses for which libvirt itself raises an error.
    """

    def __init__(self, test, ignore=0, after=0.0, lose_event=False,
                 fail=0):
        self.test = test
        self.ignore = ignore
        self.after = after
        self.lose_event = lose_event
        self.fail = fail
        self.presses = 0
        self.timers = []

    def press(self, dom):
        self.presses += 1
        if self.presses <= self.fail:
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError, 'Requested operation is not valid',
                error_code=fakelibvirt.VIR_ERR_OPERATION_INVALID)
        if self.ignore is None or self.presses <= self.fail + self.ignore:
            return
        # libvirt calls may run on eventlet's native pool threads: use a
        # native timer, it only calls libvirt-side code.
        timer = concurrency.native_threading().Timer(
            self.after, self.power_off, args=(dom,))
        timer.name = 'test-guest-%d' % self.presses
        self.timers.append(timer)
        timer.start()

    def power_off(self, dom):
        dom._state = SHUTOFF
        if not self.lose_event:
            conn = dom._connection
            conn._emit_lifecycle(
                dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST)
            conn._emit_lifecycle(dom, libvirt_events.DOMAIN_EVENT_STOPPED,
                                 libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)

    def join(self):
        for timer in self.timers:
            timer.join(WAIT)


class CleanShutdownTest(test_driver.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.flags(stopped_event_delay=60, group='lifecycle')
        self.conn = self.start_events()
        self.dom = self.conn.createXML(test_driver.DOMAIN_XML, 0)
        self.raw_dom = getattr(self.dom, '_obj', self.dom)
        self.instance = objects.Instance(uuid=UUID)
        self.reads = 0
        info = fakelibvirt.Domain.info

        def counted_info(dom):
            self.reads += 1
            return info(dom)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.info', counted_info))

    def guest(self, **kwargs):
        guest = Guest(self, **kwargs)
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.shutdown', guest.press))
        self.addCleanup(guest.join)
        return guest

    def clean_shutdown(self, timeout, retry_interval):
        start = time.monotonic()
        result = self.driver._clean_shutdown(self.instance, timeout,
                                             retry_interval)
        return result, time.monotonic() - start

    def test_guest_that_honours_acpi_is_seen_by_its_event(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.shutdown.RECHECK_INTERVAL', 30))
        guest = self.guest(after=0.05)
        result, elapsed = self.clean_shutdown(timeout=60, retry_interval=0)
        self.assertTrue(result)
        self.assertEqual(1, guest.presses)
        # Woken by the event: one read before the request, one after the
        # wake-up; a recheck would only have come after 30 s.
        self.assertEqual(2, self.reads)
        self.assertLess(elapsed, 30)
        self.assertEqual(0, self.driver.event_path.status().stop_waiters)

    def test_lost_event_is_caught_by_the_recheck(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.shutdown.RECHECK_INTERVAL', 0.05))
        guest = self.guest(after=0.1, lose_event=True)
        result, _elapsed = self.clean_shutdown(timeout=60, retry_interval=0)
        self.assertTrue(result)
        self.assertEqual(1, guest.presses)

    def test_guest_that_ignores_acpi_times_out(self):
        guest = self.guest(ignore=None)
        result, elapsed = self.clean_shutdown(timeout=0.5,
                                              retry_interval=0.1)
        self.assertFalse(result)
        self.assertGreaterEqual(elapsed, 0.5)
        # One press at the start, then one per retry interval.
        self.assertGreaterEqual(guest.presses, 4)
        self.assertLessEqual(guest.presses, 6)
        self.assertEqual(RUNNING, self.raw_dom._state)

    def test_guest_that_ignores_the_first_presses_is_retried(self):
        guest = self.guest(ignore=2, after=0.0)
        result, _elapsed = self.clean_shutdown(timeout=30,
                                               retry_interval=0.05)
        self.assertTrue(result)
        self.assertEqual(3, guest.presses)

    def test_no_retry_without_interval(self):
        guest = self.guest(ignore=None)
        result, _elapsed = self.clean_shutdown(timeout=0.3, retry_interval=0)
        self.assertFalse(result)
        self.assertEqual(1, guest.presses)

    def test_no_wait_sends_one_request_as_upstream(self):
        """timeout 0: one request, no wait, no further read of the domain."""
        guest = self.guest(ignore=None)
        result, _elapsed = self.clean_shutdown(timeout=0, retry_interval=3)
        self.assertFalse(result)
        self.assertEqual(1, guest.presses)
        self.assertEqual(1, self.reads)
        self.assertEqual(0, self.driver.event_path.status().stop_waiters)

    def test_already_off(self):
        guest = self.guest()
        self.raw_dom._state = SHUTOFF
        result, _elapsed = self.clean_shutdown(timeout=30, retry_interval=1)
        self.assertTrue(result)
        self.assertEqual(0, guest.presses)

    def test_domain_deleted_meanwhile(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.shutdown.RECHECK_INTERVAL', 0.05))
        guest = self.guest(ignore=None)

        def undefine():
            self.conn._vms.pop(self.raw_dom.name(), None)

        timer = concurrency.native_threading().Timer(0.1, undefine)
        timer.name = 'test-undefine'
        timer.start()
        self.addCleanup(timer.join, WAIT)
        result, _elapsed = self.clean_shutdown(timeout=30, retry_interval=0)
        self.assertTrue(result)
        self.assertEqual(1, guest.presses)

    def test_libvirt_error_from_shutdown_is_retried(self):
        guest = self.guest(fail=1, after=0.0)
        result, _elapsed = self.clean_shutdown(timeout=30,
                                               retry_interval=0.05)
        self.assertTrue(result)
        self.assertEqual(2, guest.presses)

    def test_no_domain(self):
        self.conn._vms.clear()
        result, _elapsed = self.clean_shutdown(timeout=30, retry_interval=1)
        self.assertTrue(result)

    def test_power_off_destroys_after_the_timeout(self):
        self.guest(ignore=None)
        destroy = self.useFixture(fixtures.MockPatchObject(
            self.driver, '_destroy')).mock
        self.driver.power_off(self.instance, timeout=0.2, retry_interval=0)
        destroy.assert_called_once_with(self.instance)
        # The power-off was an operation of the driver while it ran.
        self.assertNotIn(UUID, self.driver.event_path.status().operations)


class StopWaitersTest(test_driver.DriverTestCase):

    def test_only_stopped_events_of_the_instance_wake(self):
        def event(transition, libvirt_event):
            return libvirt_events.DomainLifecycleEvent(
                UUID, transition, libvirt_event, 0)

        waiters = stop_waiters.StopWaiters()
        with waiters.waiting_for(UUID) as mine, \
                waiters.waiting_for('other') as other:
            self.assertEqual(2, waiters.waiting())
            waiters.notify(event(virtevent.EVENT_LIFECYCLE_STARTED,
                                 libvirt_events.DOMAIN_EVENT_STARTED))
            self.assertFalse(mine.is_set())
            waiters.notify(event(virtevent.EVENT_LIFECYCLE_STOPPED,
                                 libvirt_events.DOMAIN_EVENT_STOPPED))
            self.assertTrue(mine.is_set())
            self.assertFalse(other.is_set())
        self.assertEqual(0, waiters.waiting())
