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

"""Rules of the DelayedExecutor, in both concurrency modes."""

from concurrent import futures
import random
import threading
import time
import weakref

from nova_lifecycle.common import delayed
from nova_lifecycle import concurrency
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures

WAIT = 10  # seconds a test waits on a Future before calling it a hang
NAME = 'lifecycle-test-delayed'


class FrozenClock:
    """A clock that only moves when told to, for exact deadlines."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Payload:
    """An argument whose lifetime a weak reference can watch."""


class Task:
    """A callable whose lifetime a weak reference can watch."""

    def __call__(self, *args):
        return len(args)


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


class TestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())

    def make(self, clock=None):
        d = delayed.DelayedExecutor(NAME)
        if clock is not None:
            d._clock = clock
        self.addCleanup(d.shutdown, wait=True, cancel_futures=True)
        return d

    def advance(self, d, clock, seconds):
        """Move the frozen clock on and let the scheduler look at it."""
        clock.now += seconds
        with d._lock:
            d._wakeup.notify()

    def assert_thread_gone(self, d):
        self.assertFalse(d.is_alive())
        self.assertNotIn(NAME, [t.name for t in threading.enumerate()])

    def assert_notified(self, fs):
        """Every Future is done for concurrent.futures.wait() already."""
        done, not_done = futures.wait(fs, timeout=0)
        self.assertEqual(set(), not_done)


class SubmitTest(TestCase):

    def test_runs_after_its_delay_on_the_scheduler_thread(self):
        seen = []

        def task(x):
            seen.append((time.monotonic(), threading.current_thread().name))
            return x * 2

        d = self.make()
        start = time.monotonic()
        f = d.submit_after(0.05, task, 21)
        self.assertIsInstance(f, futures.Future)
        self.assertEqual(42, f.result(timeout=WAIT))
        (ran_at, thread_name), = seen
        self.assertGreaterEqual(ran_at, start + 0.05)
        self.assertEqual(NAME, thread_name)

    def test_scheduler_thread_fits_the_concurrency_mode(self):
        d = self.make()
        self.assertIsNone(d.submit_after(0, lambda: None).result(WAIT))
        native = [t.name for t in concurrency.native_threading().enumerate()]
        # Green under eventlet (only the patched threading lists it),
        # a real thread with native threads.
        self.assertEqual(concurrency.threading_mode(), NAME in native)
        self.assertIn(NAME, [t.name for t in threading.enumerate()])

    def test_delay_must_be_a_number_not_below_zero(self):
        d = self.make()
        self.assertRaises(ValueError, d.submit_after, -0.1, str)
        self.assertRaises(ValueError, d.submit_after, float('nan'), str)
        self.assertEqual(0, d.pending_count())
        self.assertFalse(d.is_alive())
        self.assertEqual(0, d.submit_after(0, int).result(WAIT))

    def test_no_thread_until_the_first_submit_then_one_named(self):
        before = threading.active_count()
        d = self.make()
        self.assertFalse(d.is_alive())
        self.assertEqual(before, threading.active_count())
        for i in range(500):
            d.submit_after(3600 + i % 3, str, i)
        self.assertTrue(d.is_alive())
        self.assertEqual(before + 1, threading.active_count())
        self.assertEqual(
            1, sum(1 for t in threading.enumerate() if t.name == NAME))

    def test_task_that_raises_ends_its_future_and_the_next_runs(self):
        error = KeyError('boom')

        def boom():
            raise error

        d = self.make()
        f = d.submit_after(0, boom)
        self.assertIs(error, f.exception(timeout=WAIT))
        self.assertEqual('next', d.submit_after(0, str, 'next').result(WAIT))
        self.assertTrue(d.is_alive())

    def test_task_may_submit_and_cancel_from_the_scheduler_thread(self):
        d = self.make()
        later = d.submit_after(3600, str, 'never')

        def task():
            return later.cancel(), d.submit_after(0, str, 'follow-up')

        cancelled, follow_up = d.submit_after(0, task).result(WAIT)
        self.assertTrue(cancelled)
        self.assertEqual('follow-up', follow_up.result(WAIT))
        self.assertTrue(later.cancelled())

    def test_new_shorter_lane_wakes_the_scheduler(self):
        d = self.make()
        slow = d.submit_after(3600, str, 'slow')
        # Once the scheduler waits (for the hour), the new lane's head is
        # due first and must not wait for it.
        self.assertTrue(wait_until(lambda: d._wakeup._waiters))
        self.assertEqual('fast', d.submit_after(0.01, str, 'fast')
                         .result(WAIT))
        self.assertFalse(slow.done())
        self.assertEqual([slow], [p.future for p in d.pending()])


class LaneTest(TestCase):

    def test_lanes_interleave_in_deadline_order(self):
        clock = FrozenClock()
        d = self.make(clock)
        order = []
        fs = []
        # (clock, delay, name): the lanes 10, 20 and 30 interleave.
        for at, delay, name in ((1000, 30, 'a'), (1000, 10, 'b'),
                                (1005, 20, 'c'), (1005, 10, 'd'),
                                (1009, 10, 'e'), (1009, 30, 'f')):
            clock.now = at
            fs.append(d.submit_after(delay, order.append, name))
        self.assertEqual(3, len(d._lanes))
        self.assertEqual(
            [('b', 1.0), ('d', 6.0), ('e', 10.0), ('c', 16.0), ('a', 21.0),
             ('f', 30.0)],
            [('abcdef'[fs.index(p.future)], p.remaining)
             for p in d.pending()])
        self.assertEqual([], order)
        self.advance(d, clock, 1000)
        futures.wait(fs, timeout=WAIT)
        self.assertEqual(['b', 'd', 'e', 'c', 'a', 'f'], order)
        self.assertEqual({}, d._lanes)

    def test_pending_remaining_follows_the_clock(self):
        clock = FrozenClock()
        d = self.make(clock)
        # Due calls run on the scheduler thread: keep it busy in a first
        # call, so that no task falls due and runs while pending() is read.
        gate_entered, gate_open = threading.Event(), threading.Event()

        def gate():
            gate_entered.set()
            gate_open.wait(WAIT)

        d.submit_after(0, gate)
        self.assertTrue(gate_entered.wait(WAIT))
        self.addCleanup(gate_open.set)
        d.submit_after(20, str, 'b')
        d.submit_after(10, str, 'a')
        d.submit_after(5, str, 'gone').cancel()
        clock.now += 3
        self.assertEqual([7.0, 17.0], [p.remaining for p in d.pending()])
        clock.now += 15
        self.assertEqual([0.0, 2.0], [p.remaining for p in d.pending()])
        self.assertEqual(2, d.pending_count())

    def test_cancel_at_head_middle_and_tail(self):
        clock = FrozenClock()
        d = self.make(clock)
        ran = []
        fs = []
        for i in range(5):
            fs.append(d.submit_after(10, ran.append, i))
            clock.now += 1
        lane = d._lanes[10]
        for i in (0, 2, 4):  # head, middle, tail
            self.assertTrue(fs[i].cancel())
        self.assertEqual(2, d.pending_count())
        self.assertEqual([(fs[1], 6.0), (fs[3], 8.0)],
                         [tuple(p) for p in d.pending()])
        # The head moved past the cancelled first slot.
        self.assertIs(fs[1], lane.slots[lane.head])
        cancelled = [fs[0], fs[2], fs[4]]
        self.assertTrue(all(f.cancelled() for f in cancelled))
        self.assert_notified(cancelled)
        # Cancelling again agrees and notifies nothing twice.
        self.assertTrue(fs[2].cancel())
        self.advance(d, clock, 100)
        self.assertEqual([None, None], [fs[1].result(WAIT),
                                        fs[3].result(WAIT)])
        self.assertEqual([1, 3], ran)
        self.assertFalse(fs[1].cancel())
        self.assertEqual(0, d.pending_count())

    def test_cancelling_a_whole_lane_drops_it(self):
        clock = FrozenClock()
        d = self.make(clock)
        short = [d.submit_after(1, str, i) for i in range(3)]
        long = d.submit_after(2, str, 'long')
        for f in reversed(short):
            f.cancel()
        self.assertEqual([2], list(d._lanes))
        self.assertEqual([long], [p.future for p in d.pending()])
        # A new lane of the same delay starts afresh.
        again = d.submit_after(1, str, 'again')
        self.assertEqual([again, long], [p.future for p in d.pending()])
        self.advance(d, clock, 5)
        self.assertEqual('again', again.result(WAIT))
        self.assertEqual('long', long.result(WAIT))

    def test_lane_is_compacted_when_cancelled_slots_dominate(self):
        clock = FrozenClock()
        d = self.make(clock)
        ran = []
        fs = [d.submit_after(10, ran.append, i) for i in range(1000)]
        # Keep the head: only compaction can drop slots behind it.
        for f in fs[1:901]:
            self.assertTrue(f.cancel())
        lane = d._lanes[10]
        self.assertEqual(100, d.pending_count())
        self.assertEqual(100, len(lane.slots) - lane.dead)
        self.assertLessEqual(len(lane.slots),
                             100 + delayed._COMPACT_MIN_DEAD)
        self.assertLess(len(lane.slots), 1000)
        # Slots moved: cancelling still finds the right one.
        self.assertTrue(fs[950].cancel())
        self.assertEqual(99, d.pending_count())
        self.assertNotIn(fs[950], [p.future for p in d.pending()])
        self.advance(d, clock, 100)
        futures.wait(fs, timeout=WAIT)
        self.assertEqual([0] + [i for i in range(901, 1000) if i != 950],
                         ran)

    def test_a_steady_lane_stays_bounded(self):
        d = self.make()
        done = []
        for _round in range(20):
            fs = [d.submit_after(0, done.append, i) for i in range(100)]
            futures.wait(fs, timeout=WAIT)
        self.assertEqual(2000, len(done))
        # Taken slots are dropped too; an emptied lane goes away.
        self.assertTrue(wait_until(lambda: not d._lanes))

    def test_100k_pending_submit_and_cancel(self):
        d = self.make()
        fs = [d.submit_after(3600, str, i) for i in range(100000)]
        self.assertEqual(100000, d.pending_count())
        rng = random.Random(1234)
        victims = rng.sample(fs, 50000)
        for f in victims:
            self.assertTrue(f.cancel())
        self.assertEqual(50000, d.pending_count())
        lane = d._lanes[3600]
        self.assertLessEqual(len(lane.slots),
                             2 * 50000 + delayed._COMPACT_MIN_DEAD)
        d.shutdown(wait=True, cancel_futures=True)
        self.assertEqual(100000, sum(1 for f in fs if f.cancelled()))
        self.assert_notified(fs)


class CancelTest(TestCase):

    def test_cancel_during_the_delay_means_it_never_runs(self):
        ran = []
        d = self.make()
        victim = d.submit_after(0.1, ran.append, 'victim')
        self.assertTrue(victim.cancel())
        # Same lane, later deadline: once it ran, the victim's turn passed.
        d.submit_after(0.1, ran.append, 'sentinel').result(WAIT)
        self.assertEqual(['sentinel'], ran)
        self.assertTrue(victim.cancelled())
        self.assertRaises(futures.CancelledError, victim.result, 0)

    def test_cancel_after_start_fails_and_the_task_completes(self):
        started = threading.Event()
        release = threading.Event()

        def task():
            started.set()
            release.wait(WAIT)
            return 'done'

        d = self.make()
        f = d.submit_after(0, task)
        self.assertTrue(started.wait(WAIT))
        self.assertFalse(f.cancel())
        release.set()
        self.assertEqual('done', f.result(timeout=WAIT))

    def test_cancel_wakes_a_thread_waiting_on_the_future(self):
        d = self.make()
        f = d.submit_after(3600, str)
        waited = []
        waiter = threading.Thread(
            target=lambda: waited.append(futures.wait([f], timeout=WAIT)),
            name='test-waiter')
        waiter.start()
        self.addCleanup(waiter.join, WAIT)
        # The waiter is registered on the Future before the cancel.
        self.assertTrue(wait_until(lambda: f._waiters))
        start = time.monotonic()
        self.assertTrue(f.cancel())
        waiter.join(WAIT)
        self.assertLess(time.monotonic() - start, WAIT / 2)
        (done, not_done), = waited
        self.assertEqual(({f}, set()), (done, not_done))
        self.assertEqual([f], list(futures.as_completed([f], timeout=0)))

    def test_done_callbacks_run_once_on_cancel(self):
        d = self.make()
        f = d.submit_after(3600, str)
        calls = []
        f.add_done_callback(calls.append)
        self.assertTrue(f.cancel())
        self.assertTrue(f.cancel())
        self.assertEqual([f], calls)

    def test_cancelled_task_frees_its_callable_and_arguments_at_once(self):
        d = self.make()
        payload, task = Payload(), Task()
        refs = weakref.ref(payload), weakref.ref(task)
        f = d.submit_after(3600, task, payload)
        del payload, task
        self.assertIsNotNone(refs[0]())
        self.assertIsNotNone(refs[1]())
        self.assertTrue(f.cancel())
        # No garbage collection: nothing else held them.
        self.assertEqual((None, None), (refs[0](), refs[1]()))
        self.assertEqual(0, d.pending_count())

    def test_task_that_ran_keeps_nothing_either(self):
        d = self.make()
        payload, task = Payload(), Task()
        refs = weakref.ref(payload), weakref.ref(task)
        f = d.submit_after(0, task, payload)
        del payload, task
        self.assertEqual(1, f.result(WAIT))
        self.assertTrue(wait_until(
            lambda: refs[0]() is None and refs[1]() is None))


class ShutdownTest(TestCase):

    def test_shutdown_with_cancel_futures_cancels_what_waits(self):
        ran = []
        d = self.make()
        fs = [d.submit_after(3600 + i % 2, ran.append, i) for i in range(10)]
        calls = []
        fs[0].add_done_callback(calls.append)
        d.shutdown(wait=True, cancel_futures=True)
        self.assertTrue(all(f.cancelled() for f in fs))
        self.assert_notified(fs)
        self.assertEqual([fs[0]], calls)
        self.assertEqual([], ran)
        self.assertEqual(0, d.pending_count())
        self.assertEqual([], d.pending())
        self.assert_thread_gone(d)

    def test_shutdown_without_cancel_runs_what_waits_then_ends(self):
        order = []
        d = self.make()
        fs = [d.submit_after(0.1, order.append, 'late'),
              d.submit_after(0.05, order.append, 'soon')]
        d.shutdown(wait=True)
        # wait=True returned once both had run at their deadlines.
        self.assertTrue(all(f.done() and not f.cancelled() for f in fs))
        self.assertEqual(['soon', 'late'], order)
        self.assert_thread_gone(d)

    def test_shutdown_without_wait_returns_before_the_tasks_run(self):
        clock = FrozenClock()
        d = self.make(clock)
        f = d.submit_after(10, str, 'ran')
        d.shutdown(wait=False)
        self.assertFalse(f.done())
        self.assertTrue(d.is_alive())
        self.assertRaises(RuntimeError, d.submit_after, 0, str)
        self.advance(d, clock, 10)
        self.assertEqual('ran', f.result(WAIT))
        d._thread.join(WAIT)
        self.assert_thread_gone(d)

    def test_shutdown_without_wait_with_cancel_futures(self):
        d = self.make()
        f = d.submit_after(3600, str)
        d.shutdown(wait=False, cancel_futures=True)
        self.assertTrue(f.cancelled())
        self.assert_notified([f])
        d._thread.join(WAIT)
        self.assert_thread_gone(d)

    def test_submit_after_shutdown_raises(self):
        d = self.make()
        d.shutdown()
        self.assertRaises(RuntimeError, d.submit_after, 0, str)
        self.assertIsNone(d._thread)

    def test_shutdown_twice_is_harmless(self):
        d = self.make()
        f = d.submit_after(3600, str)
        d.shutdown(cancel_futures=True)
        d.shutdown(cancel_futures=True)
        self.assertTrue(f.cancelled())
        self.assert_thread_gone(d)

    def test_submit_racing_shutdown_loses_nothing(self):
        d = self.make()
        accepted = {n: [] for n in range(4)}
        refused = set()
        go = threading.Barrier(5)

        def submitter(n):
            go.wait()
            for i in range(300):
                try:
                    accepted[n].append(d.submit_after(0.01 * (i % 3), int,
                                                      n))
                except RuntimeError:
                    refused.add(n)
                    return

        threads = [threading.Thread(target=submitter, args=(n,),
                                    name='submitter-%d' % n)
                   for n in range(4)]
        for t in threads:
            t.start()
        go.wait()
        d.shutdown(wait=True, cancel_futures=True)
        for t in threads:
            t.join(WAIT)
        # Each submitter had all its tasks taken or was refused once.
        for n, fs in accepted.items():
            self.assertTrue(len(fs) == 300 or n in refused)
        # After shutdown(wait=True) every accepted Future has ended.
        fs = [f for n in accepted for f in accepted[n]]
        self.assert_notified(fs)
        for n, mine in accepted.items():
            for f in mine:
                self.assertTrue(f.cancelled() or f.result() == n)
        self.assert_thread_gone(d)


class StressTest(TestCase):

    def test_many_threads_submit_and_cancel(self):
        d = self.make()
        lock = threading.Lock()
        ran = []
        all_futures = []
        cancelled_by_us = set()

        def worker(seed):
            rng = random.Random(seed)
            mine = []
            for i in range(500):
                delay = rng.choice([0.0, 0.001, 0.01, 0.05])
                mine.append(d.submit_after(delay, ran.append, (seed, i)))
                if rng.random() < 0.4:
                    victim = rng.randrange(len(mine))
                    if mine[victim].cancel():
                        with lock:
                            cancelled_by_us.add((seed, victim))
            with lock:
                all_futures.extend(mine)

        threads = [threading.Thread(target=worker, args=(seed,),
                                    name='stress-%d' % seed)
                   for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT * 3)
        done, not_done = futures.wait(all_futures, timeout=WAIT * 3)
        self.assertEqual(set(), not_done)
        outcomes = {'cancelled': 0, 'ran': 0}
        for f in all_futures:
            outcomes['cancelled' if f.cancelled() else 'ran'] += 1
        self.assertEqual(4000, sum(outcomes.values()))
        self.assertEqual(outcomes['ran'], len(ran))
        self.assertEqual(len(ran), len(set(ran)))
        self.assertTrue(cancelled_by_us.isdisjoint(ran))
        self.assertEqual(0, d.pending_count())
        self.assertTrue(wait_until(lambda: not d._lanes))
