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

"""The event path: order, holding STOPPED, bad input, accounting."""

import collections
import logging
import threading

import fixtures
from nova.virt import event as virtevent
from nova.virt.libvirt import event as libvirtevent

from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import path as event_path
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures

WAIT = 10
UUID_A = 'aaaaaaaa-0000-0000-0000-000000000001'
UUID_B = 'bbbbbbbb-0000-0000-0000-000000000002'

STARTED = virtevent.EVENT_LIFECYCLE_STARTED
STOPPED = virtevent.EVENT_LIFECYCLE_STOPPED
PAUSED = virtevent.EVENT_LIFECYCLE_PAUSED
RESUMED = virtevent.EVENT_LIFECYCLE_RESUMED

_LIBVIRT_TYPE = {STARTED: libvirt_events.DOMAIN_EVENT_STARTED,
                 STOPPED: libvirt_events.DOMAIN_EVENT_STOPPED,
                 PAUSED: libvirt_events.DOMAIN_EVENT_SUSPENDED,
                 RESUMED: libvirt_events.DOMAIN_EVENT_RESUMED}


def lifecycle(uuid, transition, detail=0, libvirt_event=None):
    if libvirt_event is None:
        libvirt_event = _LIBVIRT_TYPE[transition]
    return libvirt_events.DomainLifecycleEvent(uuid, transition,
                                               libvirt_event, detail)


class Conf:
    """The ``[lifecycle]`` options an EventPath reads.

    With ``fast_stopped_events`` off (the default here) every STOPPED is
    held ``stopped_event_delay`` and never re-checked, as upstream.
    """

    def __init__(self, delay=60.0, workers=4, fast=False, grace=1.0,
                 retries=2, retry_interval=0.01):
        self.stopped_event_delay = delay
        self.dispatch_workers = workers
        self.fast_stopped_events = fast
        self.stopped_event_grace = grace
        self.delivery_retries = retries
        self.delivery_retry_interval = retry_interval


def no_domain(uuid):
    return None


class Recorder:
    """A listener that records deliveries and can be made slow or fail."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []
        self.threads = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_for = set()
        # Transitions that fail with PassingError this many more times.
        self.fail_passing = {}
        self.failures = 0
        self.listening = True
        self.delivered = threading.Condition(self.lock)

    def __call__(self, event):
        self.gate.wait(WAIT)
        if not self.listening:
            return False
        transition = getattr(event, 'transition', None)
        if transition in self.fail_for:
            raise RuntimeError('listener failed on %s' % event.get_name())
        with self.lock:
            if self.fail_passing.get(transition, 0) > 0:
                self.fail_passing[transition] -= 1
                self.failures += 1
                self.delivered.notify_all()
                raise PassingError('conductor away on %s' % event.get_name())
        with self.lock:
            self.events.append(event)
            self.threads.append(threading.current_thread().name)
            self.delivered.notify_all()
        return True

    def wait_for(self, count):
        with self.lock:
            ok = self.delivered.wait_for(lambda: len(self.events) >= count,
                                         WAIT)
        assert ok, 'only %d of %d events delivered' % (
            len(self.events), count)

    def transitions(self, uuid=None):
        with self.lock:
            return [e.transition for e in self.events
                    if uuid is None or e.uuid == uuid]


class PassingError(Exception):
    """A failure the path is told may pass (as a MessagingTimeout)."""


def may_pass(error):
    return isinstance(error, PassingError)


class EventPathTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.logs = self.useFixture(fixtures.FakeLogger(level=logging.DEBUG))
        self.recorder = Recorder()
        self.listener = self.recorder

    def make(self, delay=60.0, workers=4, live_state=no_domain,
             retryable=may_pass, **conf):
        p = event_path.EventPath(
            Conf(delay, workers, **conf), lambda e: self.listener(e),
            live_state, green=not concurrency.threading_mode(),
            retryable=retryable)
        p.start()
        self.addCleanup(self.assert_balanced, p)
        self.addCleanup(p.stop)
        return p

    def assert_balanced(self, p):
        counts = p.status().counts
        self.assertTrue(lc_fixtures.balanced(counts), counts)

    def wait_ended(self, p, count):
        """Wait until ``count`` events have ended; return the counters."""
        self.assertTrue(lc_fixtures.wait_settled(p, count, WAIT),
                        p.status().counts)
        return p.status().counts


class OrderAndConcurrencyTest(EventPathTestCase):

    def test_per_instance_order_across_many_instances(self):
        p = self.make(workers=4)
        sequence = [STARTED, PAUSED, RESUMED, PAUSED, RESUMED] * 20
        uuids = ['%08d-0000-0000-0000-000000000000' % i for i in range(10)]
        for transition in sequence:
            for uuid in uuids:
                p.queue(lifecycle(uuid, transition))
        self.recorder.wait_for(len(sequence) * len(uuids))
        for uuid in uuids:
            self.assertEqual(sequence, self.recorder.transitions(uuid))
        # The ledger counts once the listener has returned.
        stats = self.wait_ended(p, len(sequence) * len(uuids))
        self.assertEqual(len(sequence) * len(uuids), stats['delivered'])

    def test_queue_event_never_waits_for_the_listener(self):
        p = self.make(workers=2)
        self.recorder.gate.clear()
        for i in range(500):
            p.queue(lifecycle(UUID_A if i % 2 else UUID_B, PAUSED))
        # Every call above returned while the listener was blocked.
        self.assertEqual([], self.recorder.transitions())
        self.recorder.gate.set()
        self.recorder.wait_for(500)

    def test_listener_runs_on_a_dispatch_worker(self):
        p = self.make()
        caller = concurrency.native_threading().Thread(
            target=p.queue, args=(lifecycle(UUID_A, STARTED),),
            name='fake-libvirt-loop')
        caller.start()
        caller.join(WAIT)
        self.recorder.wait_for(1)
        self.assertNotEqual('fake-libvirt-loop', self.recorder.threads[0])

    def test_slow_instance_does_not_stall_others(self):
        p = self.make(workers=2)
        blocker = threading.Event()
        original = self.recorder.__call__

        def listener(event):
            if event.uuid == UUID_A:
                blocker.wait(WAIT)
            return original(event)

        self.listener = listener
        p.queue(lifecycle(UUID_A, STARTED))
        p.queue(lifecycle(UUID_B, STARTED))
        self.recorder.wait_for(1)
        self.assertEqual([UUID_B], [e.uuid for e in self.recorder.events])
        blocker.set()
        self.recorder.wait_for(2)


class HeldStoppedTest(EventPathTestCase):

    def test_stopped_is_delivered_after_the_delay(self):
        p = self.make(delay=0.05)
        event = lifecycle(
            UUID_A, STOPPED, libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        p.queue(event)
        self.recorder.wait_for(1)
        delivered = self.recorder.events[0]
        self.assertIs(event, delivered)
        self.assertEqual('STOPPED_SHUTDOWN', delivered.detail_name)

    def test_later_event_cancels_held_stopped(self):
        p = self.make(delay=60)
        p.queue(lifecycle(
            UUID_A, STOPPED, libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED))
        self.assertTrue(lc_fixtures.wait_received(p, 1, WAIT))
        self.assertEqual([UUID_A], [u for u, _ in p.status().held])
        p.queue(lifecycle(UUID_A, RESUMED))
        p.queue(lifecycle(UUID_A, STARTED))
        self.recorder.wait_for(2)
        self.assertEqual([RESUMED, STARTED], self.recorder.transitions())
        stats = self.wait_ended(p, 3)
        self.assertEqual({'superseded by Resumed': 1},
                         stats['cancelled_by_reason'])
        self.assertEqual([], p.status().held)
        self.assertIn('STOPPED event for instance %s cancelled: superseded'
                      % UUID_A, self.logs.output)

    def test_hard_reboot_sequence_delivers_no_stop(self):
        p = self.make(delay=60)
        for transition in (STOPPED, RESUMED, STARTED):
            p.queue(lifecycle(UUID_A, transition))
        self.recorder.wait_for(2)
        self.assertNotIn(STOPPED, self.recorder.transitions())

    def test_other_instance_does_not_cancel(self):
        p = self.make(delay=0.1)
        p.queue(lifecycle(UUID_A, STOPPED))
        p.queue(lifecycle(UUID_B, STARTED))
        self.recorder.wait_for(2)
        self.assertEqual([STOPPED], self.recorder.transitions(UUID_A))

    def test_device_event_does_not_cancel(self):
        p = self.make(delay=0.1)
        p.queue(lifecycle(UUID_A, STOPPED))
        p.queue(libvirtevent.DeviceRemovedEvent(UUID_A, 'virtio-disk1'))
        self.recorder.wait_for(2)
        self.assertEqual(STOPPED, self.recorder.events[-1].transition)
        self.assertIsInstance(self.recorder.events[0],
                              libvirtevent.DeviceRemovedEvent)

    def test_second_stopped_replaces_the_first(self):
        p = self.make(delay=0.1)
        p.queue(lifecycle(
            UUID_A, STOPPED, libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN))
        p.queue(lifecycle(
            UUID_A, STOPPED, libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED))
        self.recorder.wait_for(1)
        stats = self.wait_ended(p, 2)
        self.assertEqual(['STOPPED_DESTROYED'],
                         [e.detail_name for e in self.recorder.events])
        self.assertEqual(1, stats['cancelled'])

    def test_late_operation_end_brings_a_hold_forward_never_back(self):
        p = self.make(delay=60, fast=True, grace=0.05)
        with p.track(UUID_A, 'reboot'):
            p.queue(lifecycle(UUID_A, STOPPED,
                              libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED))
            self.assertTrue(lc_fixtures.wait_received(p, 1, WAIT))
            (uuid, left), = p.status().held
            self.assertGreater(left, 50)
        # The reboot ended without a following event: the STOPPED goes on
        # after the grace, checked against the domain (gone here).
        self.recorder.wait_for(1)
        self.assertEqual([STOPPED], self.recorder.transitions(UUID_A))

    def test_a_delivered_stopped_says_why_the_domain_stopped(self):
        p = self.make(delay=0.01)
        event = lifecycle(UUID_A, STOPPED,
                          libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        event.shutdown_detail = libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST
        p.queue(event)
        p.queue(lifecycle(UUID_B, STOPPED,
                          libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED))
        self.wait_ended(p, 2)
        self.assertIn('Instance %s is off: guest shut down by itself; Nova '
                      'was told.' % UUID_A, self.logs.output)
        self.assertIn('Instance %s is off: guest crashed' % UUID_B,
                      self.logs.output)
        self.assertEqual({'guest shut down by itself': 1, 'guest crashed': 1},
                         p.status().stopped_by_reason)

    def test_a_stopped_during_a_driver_operation_names_it(self):
        # QEMU reports a guest's answer to Nova's ACPI request as GUEST.
        p = self.make(delay=0.01)
        event = lifecycle(UUID_A, STOPPED,
                          libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        event.shutdown_detail = libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST
        with p.track(UUID_A, 'power_off'):
            p.queue(event)
            self.wait_ended(p, 1)
        self.assertIn('Instance %s is off: during Nova\'s power_off '
                      '(libvirt: guest shut down by itself); Nova was told.'
                      % UUID_A, self.logs.output)
        self.assertEqual({'during Nova\'s power_off': 1},
                         p.status().stopped_by_reason)

    def test_stopped_of_a_running_domain_is_cancelled_by_the_recheck(self):
        running = 1  # virDomainState RUNNING
        p = self.make(delay=0.01, fast=True, grace=0.01,
                      live_state=lambda uuid: running)
        p.queue(lifecycle(UUID_A, STOPPED,
                          libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED))
        stats = self.wait_ended(p, 1)
        self.assertEqual({'domain is running again': 1},
                         stats['cancelled_by_reason'])
        self.assertEqual([], self.recorder.transitions())


class BadInputTest(EventPathTestCase):

    def test_listener_failure_is_counted_and_next_event_still_runs(self):
        p = self.make()
        self.recorder.fail_for = {PAUSED}
        p.queue(lifecycle(UUID_A, PAUSED))
        p.queue(lifecycle(UUID_A, RESUMED))
        self.recorder.wait_for(1)
        stats = self.wait_ended(p, 2)
        self.assertEqual(1, stats['failed'])
        self.assertEqual({'RuntimeError': 1}, stats['failed_by_error'])
        self.assertIn('Handling event', self.logs.output)
        self.assertIn(UUID_A, self.logs.output)

    def test_no_listener_cancels_with_reason(self):
        p = self.make()
        self.recorder.listening = False
        p.queue(lifecycle(UUID_A, STARTED))
        stats = self.wait_ended(p, 1)
        self.assertEqual({'no listener': 1}, stats['cancelled_by_reason'])

    def test_unknown_event_type_logged_once(self):
        p = self.make()
        for _ in range(3):
            p.queue(libvirt_events.DomainLifecycleEvent(
                UUID_A, None, 42, 0))
        stats = self.wait_ended(p, 3)
        self.assertEqual({'no Nova transition': 3},
                         stats['cancelled_by_reason'])
        self.assertEqual(1, self.logs.output.count('UNKNOWN(42)'))
        self.assertIn(UUID_A, self.logs.output)

    def test_unknown_detail_delivered_and_logged_once(self):
        p = self.make()
        for _ in range(2):
            p.queue(lifecycle(UUID_A, PAUSED, detail=99))
        self.recorder.wait_for(2)
        self.assertEqual(1, self.logs.output.count('SUSPENDED_UNKNOWN(99)'))

    def test_event_without_uuid_fails_with_a_warning(self):
        p = self.make()
        p.queue(libvirt_events.DomainLifecycleEvent(
            None, None, libvirt_events.DOMAIN_EVENT_STOPPED, 0,
            error='cannot read domain UUID'))
        stats = self.wait_ended(p, 1)
        self.assertEqual({'BadLifecycleEvent': 1}, stats['failed_by_error'])
        self.assertIn('cannot read domain UUID', self.logs.output)

    def test_non_instance_item_fails_with_a_warning(self):
        p = self.make()
        p.queue({'conn': None, 'reason': 'gone'})
        stats = self.wait_ended(p, 1)
        self.assertEqual({'TypeError': 1}, stats['failed_by_error'])
        self.assertIn('not an instance event', self.logs.output)
        self.assertEqual([], self.recorder.events)


class RetryTest(EventPathTestCase):
    """A delivery that failed for a passing reason is tried again."""

    def wait_failures(self, count):
        with self.recorder.lock:
            self.assertTrue(self.recorder.delivered.wait_for(
                lambda: self.recorder.failures >= count, WAIT))

    def test_an_event_is_delivered_once_the_error_passes(self):
        p = self.make(delay=0, retries=3)
        self.recorder.fail_passing = {STOPPED: 2}
        p.queue(lifecycle(UUID_A, STOPPED))
        stats = self.wait_ended(p, 1)
        self.assertEqual(1, stats['delivered'])
        self.assertEqual(0, stats['failed'])
        self.assertEqual([STOPPED], self.recorder.transitions(UUID_A))
        status = p.status()
        self.assertEqual({'PassingError': 2}, status.retries)
        self.assertEqual([], status.retrying)
        # The latency is observed once, on the first attempt.
        self.assertEqual(1, status.delivery_latency['count'])
        self.assertIn('trying again in 0.0s (attempt 2 of 4)',
                      self.logs.output)
        self.assertIn(UUID_A, self.logs.output)

    def test_it_fails_with_the_error_after_the_last_attempt(self):
        p = self.make(retries=2)
        self.recorder.fail_passing = {PAUSED: 10}
        paused = lifecycle(UUID_A, PAUSED)
        p.queue(paused)
        stats = self.wait_ended(p, 1)
        self.assertEqual({'PassingError': 1}, stats['failed_by_error'])
        self.assertEqual(3, self.recorder.failures)
        self.assertEqual({'PassingError': 2}, p.status().retries)
        self.assertIn('Handling event %s for instance %s failed after 2 '
                      'more attempts' % (paused, UUID_A),
                      self.logs.output)

    def test_other_errors_fail_at_once(self):
        p = self.make(retries=5)
        self.recorder.fail_for = {PAUSED}
        p.queue(lifecycle(UUID_A, PAUSED))
        stats = self.wait_ended(p, 1)
        self.assertEqual({'RuntimeError': 1}, stats['failed_by_error'])
        self.assertEqual({}, p.status().retries)

    def test_retries_off(self):
        p = self.make(retries=0)
        self.recorder.fail_passing = {PAUSED: 1}
        p.queue(lifecycle(UUID_A, PAUSED))
        stats = self.wait_ended(p, 1)
        self.assertEqual({'PassingError': 1}, stats['failed_by_error'])

    def test_a_later_event_replaces_the_one_waiting(self):
        # Whether RESUMED comes before or after PAUSED's failure is
        # settled, PAUSED must not reach Nova after it.
        p = self.make(retries=3, retry_interval=3600)
        self.recorder.fail_passing = {PAUSED: 1}
        p.queue(lifecycle(UUID_A, PAUSED))
        self.wait_failures(1)
        p.queue(lifecycle(UUID_A, RESUMED))
        stats = self.wait_ended(p, 2)
        self.assertEqual({'superseded by Resumed': 1},
                         stats['cancelled_by_reason'])
        self.assertEqual([RESUMED], self.recorder.transitions(UUID_A))
        self.assertEqual([], p.status().retrying)

    def test_an_event_waiting_shows_in_the_status(self):
        p = self.make(retries=3, retry_interval=3600)
        self.recorder.fail_passing = {PAUSED: 1}
        p.queue(lifecycle(UUID_A, PAUSED))
        # A later event of the instance that is not a lifecycle event runs
        # after the failure was settled, and replaces nothing.
        p.queue(virtevent.InstanceEvent(UUID_A))
        self.assertTrue(p.wait_for_counts(lambda c: c['delivered'] == 1,
                                          WAIT))
        status = p.status()
        self.assertEqual([UUID_A], [uuid for uuid, _ in status.retrying])
        self.assertEqual([], status.held)
        self.assertEqual(1, status.counts['pending'])

    def test_shutdown_drops_an_event_waiting_with_a_line(self):
        p = self.make(retries=3, retry_interval=3600)
        self.recorder.fail_passing = {PAUSED: 1}
        p.queue(lifecycle(UUID_A, PAUSED))
        p.queue(virtevent.InstanceEvent(UUID_A))
        self.recorder.wait_for(1)
        p.stop()
        stats = p.status().counts
        self.assertEqual({'shutdown': 1}, stats['cancelled_by_reason'])
        self.assertIn('Pending Paused event for instance %s dropped by '
                      'shutdown' % UUID_A, self.logs.output)
        self.assertEqual([], concurrency.plugin_threads())


class ShutdownTest(EventPathTestCase):

    def test_stop_drops_held_stopped_with_a_line_per_instance(self):
        p = self.make(delay=3600)
        p.queue(lifecycle(UUID_A, STOPPED))
        p.queue(lifecycle(UUID_B, STOPPED))
        p.stop()
        stats = p.status().counts
        self.assertEqual({'shutdown': 2}, stats['cancelled_by_reason'])
        for uuid in (UUID_A, UUID_B):
            self.assertIn('Pending STOPPED event for instance %s dropped by '
                          'shutdown' % uuid, self.logs.output)
        self.assertEqual([], concurrency.plugin_threads())

    def test_events_queued_before_stop_are_delivered(self):
        p = self.make(workers=1)
        self.recorder.gate.clear()
        for _ in range(20):
            p.queue(lifecycle(UUID_A, PAUSED))
        self.recorder.gate.set()
        p.stop()
        self.assertEqual(20, p.status().counts['delivered'])

    def test_event_after_stop_is_counted_never_raised(self):
        # libvirt's loop may outlive the path (a connection left open
        # after cleanup_host): nothing may raise into it, in either mode.
        p = self.make()
        p.stop()
        p.queue(lifecycle(UUID_A, STARTED))
        p.queue(object())
        stats = p.status().counts
        self.assertEqual({'shutdown': 2}, stats['cancelled_by_reason'])
        self.assertEqual(2, stats['received'])
        self.assertIn('arrived during shutdown', self.logs.output)
        self.assertIn(UUID_A, self.logs.output)

    def test_stop_twice_is_harmless(self):
        p = self.make()
        p.stop()
        p.stop()
        self.assertEqual([], concurrency.plugin_threads())


class StressTest(EventPathTestCase):

    def test_threads_emitting_for_overlapping_instances(self):
        import random
        p = self.make(delay=0.001, workers=4)
        uuids = ['%08d-0000-0000-0000-000000000000' % i for i in range(20)]
        choices = [STARTED, STOPPED, PAUSED, RESUMED]
        sent = collections.defaultdict(list)
        lock = threading.Lock()

        def emitter(seed):
            rng = random.Random(seed)
            for _ in range(300):
                uuid = rng.choice(uuids)
                with lock:  # per-instance send order is the lock's order
                    event = lifecycle(uuid, rng.choice(choices))
                    sent[uuid].append(event)
                    p.queue(event)

        threads = [threading.Thread(target=emitter, args=(s,),
                                    name='emitter-%d' % s) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        stats = self.wait_ended(p, 1800)
        self.assertTrue(lc_fixtures.balanced(stats), stats)
        self.assertEqual(1800, stats['received'])
        for uuid in uuids:
            got = [e for e in self.recorder.events if e.uuid == uuid]
            # Delivered events are a subsequence of what was sent, in order.
            it = iter(sent[uuid])
            self.assertTrue(all(any(g is s for s in it) for g in got))
