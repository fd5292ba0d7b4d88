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

"""Concurrency stress: threads submitting, cancelling, emitting, operating.

Every test draws its choices from ``random.Random(seed)``; the seed is in
every failure message and in the test's details, and the environment
variable ``NOVA_LIFECYCLE_STRESS_SEED`` replaces the default one to replay
or vary a run. The base test case's timeout turns a hang into a failure.
The interleavings themselves are the scheduler's, so a seed fixes what
each thread does, not when.
"""

import collections
import functools
import os
import random
import threading

from concurrent import futures as cf
import fixtures
from nova.virt import event as virtevent
from testtools import content

from nova_lifecycle.common import delayed
from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import path as event_path
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures

SEED_VARIABLE = 'NOVA_LIFECYCLE_STRESS_SEED'
DEFAULT_SEED = 20260707
WAIT = 30

KINDS = (
    libvirt_events.DOMAIN_EVENT_STARTED,
    libvirt_events.DOMAIN_EVENT_SUSPENDED,
    libvirt_events.DOMAIN_EVENT_RESUMED,
    libvirt_events.DOMAIN_EVENT_STOPPED)
_TRANSITIONS = {
    libvirt_events.DOMAIN_EVENT_STARTED: virtevent.EVENT_LIFECYCLE_STARTED,
    libvirt_events.DOMAIN_EVENT_STOPPED: virtevent.EVENT_LIFECYCLE_STOPPED,
    libvirt_events.DOMAIN_EVENT_SUSPENDED: virtevent.EVENT_LIFECYCLE_PAUSED,
    libvirt_events.DOMAIN_EVENT_RESUMED: virtevent.EVENT_LIFECYCLE_RESUMED,
}
# A STOPPED's detail decides its hold: a crash is held the grace, a
# destroy the delay (unless a driver operation ends meanwhile).
STOPPED_DETAILS = (libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED,
                   libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
# Driver operations on the instances, stopping ones or not.
OPERATIONS = ('reboot', 'power_off', 'spawn', 'pause')
# libvirt domain states (virDomainState) the re-check of a STOPPED reads.
RUNNING = 1
SHUTOFF = 5


class StressEvent(libvirt_events.DomainLifecycleEvent):
    """A lifecycle event carrying what the stress test decided for it."""

    def __init__(self, uuid, libvirt_event, detail, seq, fail):
        super().__init__(uuid, _TRANSITIONS[libvirt_event], libvirt_event,
                         detail)
        self.seq = seq
        self.fail = fail


class ChangingConf:
    """``[lifecycle]`` options that change all the time.

    The event path reads them live, so each read draws a value: each
    STOPPED gets a delay from ``delays`` and a grace from ``graces``.
    """

    def __init__(self, rng, delays, graces, workers):
        self._rng = rng
        self._lock = concurrency.native_threading().Lock()
        self._delays = delays
        self._graces = graces
        self.fast_stopped_events = True
        self.dispatch_workers = workers

    def _draw(self, values):
        with self._lock:
            return self._rng.choice(values)

    @property
    def stopped_event_delay(self):
        return self._draw(self._delays)

    @property
    def stopped_event_grace(self):
        return self._draw(self._graces)


class StressTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.useFixture(fixtures.FakeLogger())
        self.seed = int(os.environ.get(SEED_VARIABLE, DEFAULT_SEED))
        self.addDetail('stress-seed', content.text_content(
            '%s=%d' % (SEED_VARIABLE, self.seed)))

    def rng(self, n):
        """The random source of the test's ``n``-th actor."""
        return random.Random('%d-%d' % (self.seed, n))

    def check(self, condition, what):
        self.assertTrue(condition, '%s (%s=%d)' % (what, SEED_VARIABLE,
                                                   self.seed))

    def start(self, target, name, native=False):
        module = concurrency.native_threading() if native else threading
        # A daemon: one stuck for good fails the test, not the whole run.
        thread = module.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        return thread

    def join_all(self, threads):
        for thread in threads:
            thread.join(WAIT)
            self.check(not thread.is_alive(), '%s hangs' % thread.name)


class DelayedExecutorStressTest(StressTestCase):

    def test_submit_cancel_resubmit_and_shutdown_race(self):
        d = delayed.DelayedExecutor('lifecycle-stress-delayed')
        self.addCleanup(d.shutdown, cancel_futures=True)
        lock = threading.Lock()
        ran = collections.Counter()
        accepted = {}
        cancelled_by_us = set()
        refused = []
        ids = iter(range(10 ** 9))

        def task(task_id, rng_seed):
            with lock:
                ran[task_id] += 1
            # Some tasks submit a follow-up from the scheduler thread.
            if random.Random(rng_seed).random() < 0.05:
                submit(random.Random(rng_seed + 1))

        def submit(rng):
            with lock:
                task_id = next(ids)
            delay = rng.choice([0.0, 0.0, 0.001, 0.005, 0.02, 0.2])
            try:
                future = d.submit_after(delay, task, task_id, rng.random())
            except RuntimeError:
                refused.append(task_id)
                return
            with lock:
                accepted[task_id] = future

        def cancel_some(rng):
            with lock:
                if not accepted:
                    return
                task_id = rng.choice(list(accepted))
                future = accepted[task_id]
            if future.cancel():
                with lock:
                    cancelled_by_us.add(task_id)

        def submitter(n, pause):
            rng = self.rng(n)
            for i in range(400):
                if pause is not None and i == 200:
                    paused, resume = pause
                    paused.set()
                    resume.wait(WAIT)
                submit(rng)
                if rng.random() < 0.3:
                    cancel_some(rng)

        # Half of the submitters wait from their 200th task until the
        # shutdown is over; the others race it.
        after_shutdown = threading.Event()
        pauses = [(threading.Event(), after_shutdown) if n % 2 else None
                  for n in range(8)]
        shut = []

        def shutdown_midway():
            for paused, _resume in filter(None, pauses):
                paused.wait(WAIT)
            with lock:
                before = list(accepted.values())
            d.shutdown(wait=True, cancel_futures=True)
            # Accepted before the shutdown: ran or cancelled by now.
            shut.extend(f for f in before if not f.done())
            after_shutdown.set()

        threads = [self.start(functools.partial(submitter, n, pause),
                              'stress-submitter-%d' % n)
                   for n, pause in enumerate(pauses)]
        threads.append(self.start(shutdown_midway, 'stress-shutdown'))
        self.join_all(threads)

        done, not_done = cf.wait(list(accepted.values()), WAIT)
        self.check(not not_done, '%d futures never ended' % len(not_done))
        self.check(len(refused) >= 4 * 200,
                   'only %d submissions refused' % len(refused))
        self.check(all(count == 1 for count in ran.values()),
                   'a task ran twice')
        for task_id, future in accepted.items():
            if future.cancelled():
                self.check(task_id not in ran,
                           'cancelled task %d ran' % task_id)
            else:
                self.check(task_id in ran, 'task %d never ran' % task_id)
                self.check(future.exception() is None,
                           'task %d failed: %r' % (task_id,
                                                   future.exception()))
        self.check(cancelled_by_us.isdisjoint(ran),
                   'a task whose cancel() succeeded ran')
        self.check(not shut, '%d futures still pending after shutdown'
                   % len(shut))
        self.assertEqual(0, d.pending_count())
        self.check(not d.is_alive(), 'the scheduler thread is still alive')


class EventPathStressTest(StressTestCase):
    """Emitters (libvirt's role), operators (driver operations ending).

    An operation's end brings its instance's held STOPPED forward to the
    grace; every STOPPED that goes on is re-checked against a domain state
    drawn at random.
    """

    INSTANCES = 12
    EMITTERS = 6
    EVENTS_EACH = 500
    # Seconds a STOPPED is held (the delay, or the grace), drawn per read.
    HOLDS = (0.0, 0.001, 0.005, 0.02)
    GRACES = (0.0, 0.001, 0.005)

    def setUp(self):
        super().setUp()
        self.lock = threading.Lock()
        self.attempted = collections.defaultdict(list)
        self.active = collections.Counter()
        self.overlaps = []
        # (uuid, whether the domain was found running), per re-check.
        self.rechecks = []
        self.state_rng = self.rng(200)
        self.uuids = ['%08d-0000-0000-0000-000000000000' % i
                      for i in range(self.INSTANCES)]
        # Sending order per instance, as the intake saw it.
        self.sent = collections.defaultdict(list)
        native = concurrency.native_threading()
        self.send_locks = {uuid: native.Lock() for uuid in self.uuids}
        self.seq = iter(range(10 ** 9))
        self.seq_lock = native.Lock()

    def make_path(self):
        conf = ChangingConf(self.rng(300), self.HOLDS, self.GRACES, 4)
        self.p = event_path.EventPath(
            conf, self.deliver, self.live_state,
            green=not concurrency.threading_mode(), name='lifecycle-stress')
        self.p.start()
        self.addCleanup(self.p.stop)

    def deliver(self, event):
        with self.lock:
            self.active[event.uuid] += 1
            if self.active[event.uuid] > 1:
                self.overlaps.append(event.seq)
            self.attempted[event.uuid].append(event)
        threading.Event().wait(0)  # let another worker in
        with self.lock:
            self.active[event.uuid] -= 1
        if event.fail:
            raise RuntimeError('handler failed on %d' % event.seq)
        return True

    def live_state(self, uuid):
        """The domain's state for the re-check of a STOPPED of ``uuid``."""
        with self.lock:
            running = self.state_rng.random() < 0.2
            self.rechecks.append((uuid, running))
        return RUNNING if running else SHUTOFF

    def emit(self, rng):
        """Send one event; False once the path refuses it."""
        uuid = rng.choice(self.uuids)
        kind = rng.choice(KINDS)
        detail = (rng.choice(STOPPED_DETAILS)
                  if kind == libvirt_events.DOMAIN_EVENT_STOPPED else 0)
        fail = rng.random() < 0.05
        # Under the instance's lock, the sequence numbers of an instance
        # follow its sending order.
        with self.send_locks[uuid]:
            with self.seq_lock:
                seq = next(self.seq)
            event = StressEvent(uuid, kind, detail, seq, fail)
            try:
                self.p.queue(event)
            except RuntimeError:
                return False
            self.sent[uuid].append(event)
        return True

    def emitter(self, n, count, pause=None):
        """Send ``count`` events from the ``n``-th random source.

        With ``pause`` = (paused, resume): after a third of them, set
        ``paused`` and wait for ``resume``.
        """
        rng = self.rng(n)
        for i in range(count):
            if pause is not None and i == count // 3:
                paused, resume = pause
                paused.set()
                resume.wait(WAIT)
            if not self.emit(rng):
                return

    def operator(self, n, done):
        """Driver operations on random instances until ``done``."""
        rng = self.rng(100 + n)
        while not done.is_set():
            with self.p.track(rng.choice(self.uuids),
                              rng.choice(OPERATIONS)):
                threading.Event().wait(rng.choice([0.0, 0.0, 0.002]))
            threading.Event().wait(0.0005)

    def balance_checker(self, done, seen):
        while not done.is_set():
            stats = self.p.status().counts
            seen.append(lc_fixtures.balanced(stats) and
                        stats['pending'] >= 0)
            threading.Event().wait(0.001)

    def run_stress(self, stop_midway=False):
        self.make_path()
        done = threading.Event()
        samples = []
        helpers = [self.start(functools.partial(self.operator, n, done),
                              'stress-operator-%d' % n) for n in range(2)]
        helpers.append(self.start(
            functools.partial(self.balance_checker, done, samples),
            'stress-balance'))
        # libvirt's loop is a native thread; the odd emitters play it. The
        # even ones are service threads (green under eventlet), as the
        # test and driver code that queue events directly. To stop midway,
        # the odd emitters wait from a third of their events until the
        # stop is over; the even ones race it.
        native = concurrency.native_threading()
        resume = native.Event()
        pauses = [(native.Event(), resume) if stop_midway and n % 2 else None
                  for n in range(self.EMITTERS)]
        emitters = [self.start(
            functools.partial(self.emitter, n, self.EVENTS_EACH, pause),
            'stress-emitter-%d' % n, native=bool(n % 2))
            for n, pause in enumerate(pauses)]
        if stop_midway:
            for pause in filter(None, pauses):
                self.check(pause[0].wait(WAIT), 'an emitter never paused')
            self.p.stop()
            resume.set()
        self.join_all(emitters)
        done.set()
        self.join_all(helpers)
        total = sum(len(sent) for sent in self.sent.values())
        self.check(lc_fixtures.wait_settled(self.p, total, WAIT),
                   'events still pending: %s' % self.p.status().counts)
        self.check(samples and all(samples),
                   'the ledger did not balance at some moment')
        return total, self.p.status().counts

    def check_order(self):
        self.check(not self.overlaps, 'one instance handled twice at once')
        for uuid in self.uuids:
            # What the handler got is what was sent, in order, minus what
            # was superseded, dropped or cancelled.
            sent = iter(self.sent[uuid])
            self.check(all(any(got is e for e in sent)
                           for got in self.attempted[uuid]),
                       'instance %s handled out of order' % uuid)

    def test_emitters_operators_and_failures_on_overlapping_instances(self):
        total, stats = self.run_stress()
        self.assertEqual(self.EMITTERS * self.EVENTS_EACH, total)
        self.assertEqual(total, stats['received'])
        self.check_order()
        attempted = [e for events_ in self.attempted.values()
                     for e in events_]
        sent = [e for events_ in self.sent.values() for e in events_]
        stopped_kind = libvirt_events.DOMAIN_EVENT_STOPPED
        stopped = [e for e in sent if e.libvirt_event == stopped_kind]
        # Every event other than a STOPPED reached the handler.
        self.assertEqual(
            sorted(e.seq for e in sent if e.libvirt_event != stopped_kind),
            sorted(e.seq for e in attempted
                   if e.libvirt_event != stopped_kind))
        reasons = collections.Counter(stats['cancelled_by_reason'])
        superseded = sum(count for reason, count in reasons.items()
                         if reason.startswith('superseded by '))
        # A STOPPED was superseded, or re-checked exactly once (brought
        # forward or not): it reached the handler once, or the re-check
        # found the domain running and dropped it.
        self.assertEqual(len(stopped) - superseded, len(self.rechecks))
        handled_stops = [e for e in attempted if e.libvirt_event ==
                         stopped_kind]
        self.assertEqual(len(handled_stops),
                         len({id(e) for e in handled_stops}))
        running = sum(1 for _, found_running in self.rechecks
                      if found_running)
        self.assertEqual(len(self.rechecks), len(handled_stops) + running)
        self.assertEqual(running, reasons.pop('domain is running again', 0))
        self.assertEqual(superseded, sum(reasons.values()), reasons)
        failing = sum(1 for e in attempted if e.fail)
        self.assertEqual({'RuntimeError': failing} if failing else {},
                         stats['failed_by_error'])
        self.assertEqual(len(attempted) - failing, stats['delivered'])

    def test_stop_while_threads_emit_and_operate(self):
        # Some STOPPED events are still held when the path stops.
        self.HOLDS = (0.0, 0.005, 60.0)
        total, stats = self.run_stress(stop_midway=True)
        # Every event an emitter got in was received and ended.
        self.assertEqual(total, stats['received'])
        self.check_order()
        self.assertEqual([], concurrency.plugin_threads())
        late = (self.EMITTERS // 2) * (self.EVENTS_EACH -
                                       self.EVENTS_EACH // 3)
        # Events that came after the stop were counted, cancelled (in
        # both modes: nothing raises into an emitter).
        self.assertEqual(self.EMITTERS * self.EVENTS_EACH, total)
        self.assertGreaterEqual(
            stats['cancelled_by_reason'].get('shutdown', 0), late)
