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
import gc
import random
import threading
import weakref

import futurist

from nova_lifecycle.common import delayed
from nova_lifecycle.tests import base

WAIT = 10  # seconds a test waits on a Future before calling it a hang


class FrozenClock:
    """A clock that only moves when told to, for exact deadlines."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class GatedExecutor:
    """Wraps an executor; ``submit`` can be held at a gate to open races."""

    def __init__(self, inner):
        self.inner = inner
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.refuse = 0
        self.submitted = 0

    def submit(self, fn, *args, **kwargs):
        self.entered.set()
        self.gate.wait()
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError('executor refused the task')
        self.submitted += 1
        return self.inner.submit(fn, *args, **kwargs)


class Payload:
    """An argument whose lifetime a weak reference can watch."""


class DelayedExecutorTest(base.TestCase):

    def make(self, delay=0.0, workers=1, executor=None, **kwargs):
        executor = executor or self.make_executor(workers)
        delayed_executor = delayed.DelayedExecutor(
            executor, delay, name='test-delayed', **kwargs)
        self.addCleanup(delayed_executor.shutdown, wait=True)
        return delayed_executor

    def test_submit_returns_pending_future_then_result(self):
        clock_at_run = []
        d = self.make(delay=0.05)
        start = d._clock()
        f = d.submit(lambda x: clock_at_run.append(d._clock()) or x * 2, 21)
        self.assertIsInstance(f, futures.Future)
        self.assertEqual(42, f.result(timeout=WAIT))
        self.assertGreaterEqual(clock_at_run[0], start + 0.05)

    def test_negative_delay_rejected(self):
        self.assertRaises(ValueError, delayed.DelayedExecutor,
                          self.make_executor(), -1)
        d = self.make()
        self.assertRaises(ValueError, d.submit_after, -0.1, print)

    def test_exception_reaches_future(self):
        d = self.make()

        def boom():
            raise KeyError('boom')

        f = d.submit(boom)
        self.assertIsInstance(f.exception(timeout=WAIT), KeyError)

    def test_cancel_during_delay_never_runs(self):
        ran = []
        d = self.make(delay=0.2)
        victim = d.submit(ran.append, 'victim')
        self.assertTrue(victim.cancel())
        # Equal delays run FIFO on one worker: once the sentinel ran, the
        # victim's turn has come and gone.
        sentinel = d.submit(ran.append, 'sentinel')
        sentinel.result(timeout=WAIT)
        self.assertEqual(['sentinel'], ran)
        self.assertTrue(victim.cancelled())
        self.assertEqual(0, d.pending_count())

    def test_cancel_at_the_deadline_while_handing_over(self):
        gated = GatedExecutor(self.make_executor(1))
        gated.gate.clear()
        ran = []
        d = self.make(executor=gated)
        f = d.submit(ran.append, 'x')
        self.assertTrue(gated.entered.wait(WAIT))
        # The scheduler is inside executor.submit: the deadline has passed
        # but the task has not started, so cancelling still wins.
        self.assertTrue(f.cancel())
        gated.gate.set()
        done = d.submit(ran.append, 'after')
        done.result(timeout=WAIT)
        self.assertEqual(['after'], ran)
        self.assertTrue(f.cancelled())

    def test_cancel_after_start_fails_and_task_completes(self):
        started = threading.Event()
        release = threading.Event()

        def task():
            started.set()
            release.wait(WAIT)
            return 'done'

        d = self.make()
        f = d.submit(task)
        self.assertTrue(started.wait(WAIT))
        self.assertFalse(f.cancel())
        release.set()
        self.assertEqual('done', f.result(timeout=WAIT))

    def test_fifo_for_equal_deadlines(self):
        clock = FrozenClock()
        order = []
        d = self.make(clock=clock)
        fs = [d.submit(order.append, i) for i in range(200)]
        futures.wait(fs, timeout=WAIT)
        self.assertEqual(list(range(200)), order)

    def test_shorter_delay_submitted_later_runs_first(self):
        order = []
        d = self.make()
        slow = d.submit_after(0.3, order.append, 'slow')
        fast = d.submit_after(0.0, order.append, 'fast')
        futures.wait([slow, fast], timeout=WAIT)
        self.assertEqual(['fast', 'slow'], order)

    def test_refused_task_fails_its_future_and_scheduler_survives(self):
        gated = GatedExecutor(self.make_executor(1))
        gated.refuse = 1
        d = self.make(executor=gated)
        refused = d.submit(lambda: 'never')
        err = refused.exception(timeout=WAIT)
        self.assertIsInstance(err, RuntimeError)
        self.assertIn('refused', str(err))
        self.assertEqual('ok', d.submit(lambda: 'ok').result(timeout=WAIT))
        self.assertTrue(d.is_alive())

    def test_shut_down_executor_fails_future(self):
        executor = self.make_executor(1)
        executor.shutdown(wait=True)
        d = self.make(executor=executor)
        self.assertIsInstance(d.submit(print).exception(timeout=WAIT),
                              RuntimeError)

    def test_cancelled_task_frees_its_arguments_at_once(self):
        d = self.make(delay=3600)
        payload = Payload()
        ref = weakref.ref(payload)
        f = d.submit(print, payload)
        del payload
        gc.collect()
        self.assertIsNotNone(ref())
        self.assertTrue(f.cancel())
        gc.collect()
        self.assertIsNone(ref())
        self.assertEqual(0, d.pending_count())

    def test_heap_is_compacted_when_most_tasks_are_cancelled(self):
        d = self.make(delay=3600)
        fs = [d.submit(print, i) for i in range(1000)]
        for f in fs[:900]:
            f.cancel()
        self.assertEqual(100, d.pending_count())
        # Dead slots never outnumber live ones by more than the threshold.
        self.assertLessEqual(len(d._heap), 2 * 100 + delayed._COMPACT_MIN_DEAD)

    def test_100k_pending_submit_and_cancel(self):
        d = self.make(delay=3600)
        fs = [d.submit(print, i) for i in range(100000)]
        self.assertEqual(100000, d.pending_count())
        rng = random.Random(1234)
        victims = rng.sample(fs, 50000)
        for f in victims:
            self.assertTrue(f.cancel())
        self.assertEqual(50000, d.pending_count())
        self.assertEqual(100000, len(d.shutdown(wait=True)) + 50000)

    def test_pending_snapshot_is_sorted_and_describes_tasks(self):
        d = self.make(delay=3600)

        def deliver(uuid):
            pass

        d.submit_after(20, deliver, 'b')
        d.submit_after(10, deliver, 'a')
        cancelled = d.submit_after(5, deliver, 'gone')
        cancelled.cancel()
        snapshot = d.pending()
        self.assertEqual(2, len(snapshot))
        self.assertIn("deliver('a')", snapshot[0].description)
        self.assertLessEqual(snapshot[0].remaining, 10)
        self.assertGreater(snapshot[1].remaining, snapshot[0].remaining)

    def test_one_named_scheduler_thread_for_all_tasks(self):
        d = self.make(delay=3600)
        before = threading.active_count()
        for i in range(500):
            d.submit(print, i)
        self.assertTrue(d.is_alive())
        self.assertEqual(before + 1, threading.active_count())
        self.assertEqual(
            1, sum(1 for t in threading.enumerate()
                   if t.name == 'test-delayed'))

    def test_no_thread_until_first_submit(self):
        d = self.make()
        self.assertFalse(d.is_alive())


class ShutdownTest(base.TestCase):

    def make(self, delay, workers=2):
        executor = self.make_executor(workers)
        return delayed.DelayedExecutor(executor, delay, name='test-delayed')

    def assert_thread_gone(self, d):
        self.assertFalse(d.is_alive())
        self.assertNotIn('test-delayed',
                         [t.name for t in threading.enumerate()])

    def test_shutdown_cancels_pending_by_default(self):
        ran = []
        d = self.make(delay=3600)
        fs = [d.submit(ran.append, i) for i in range(10)]
        cancelled = d.shutdown(wait=True)
        self.assertEqual(set(fs), set(cancelled))
        self.assertTrue(all(f.cancelled() for f in fs))
        self.assertEqual([], ran)
        self.assert_thread_gone(d)

    def test_shutdown_without_cancel_runs_tasks_at_their_deadline(self):
        ran = []
        d = self.make(delay=0.1, workers=1)
        fs = [d.submit(ran.append, i) for i in range(5)]
        self.assertEqual([], d.shutdown(wait=True, cancel_pending=False))
        futures.wait(fs, timeout=WAIT)
        self.assertEqual(list(range(5)), ran)
        self.assertTrue(all(f.done() and not f.cancelled() for f in fs))
        self.assert_thread_gone(d)

    def test_shutdown_no_wait_then_thread_exits(self):
        d = self.make(delay=3600)
        f = d.submit(print)
        d.shutdown(wait=False)
        self.assertTrue(f.cancelled())
        d._thread.join(WAIT)
        self.assert_thread_gone(d)

    def test_submit_after_shutdown_raises(self):
        d = self.make(delay=0)
        d.shutdown()
        self.assertRaises(RuntimeError, d.submit, print)

    def test_shutdown_twice_is_harmless(self):
        d = self.make(delay=3600)
        d.submit(print)
        self.assertEqual(1, len(d.shutdown()))
        self.assertEqual([], d.shutdown())
        self.assert_thread_gone(d)

    def test_shutdown_before_any_submit(self):
        d = self.make(delay=1)
        self.assertEqual([], d.shutdown())
        self.assert_thread_gone(d)

    def test_submit_racing_shutdown_loses_nothing(self):
        d = self.make(delay=0.01, workers=4)
        accepted = []
        refused = []
        go = threading.Barrier(5)

        def submitter(n):
            go.wait()
            for i in range(300):
                try:
                    accepted.append(d.submit(lambda: n))
                except RuntimeError:
                    refused.append(n)
                    return

        threads = [threading.Thread(target=submitter, args=(n,),
                                    name='submitter-%d' % n)
                   for n in range(4)]
        for t in threads:
            t.start()
        go.wait()
        d.shutdown(wait=True)
        for t in threads:
            t.join(WAIT)
        done, not_done = futures.wait(accepted, timeout=WAIT)
        self.assertEqual(set(), not_done)
        for f in accepted:
            self.assertTrue(f.cancelled() or f.result() in range(4))
        self.assert_thread_gone(d)


class StressTest(base.TestCase):

    def test_many_threads_submit_and_cancel(self):
        executor = self.make_executor(4)
        d = delayed.DelayedExecutor(executor, 0.0, name='test-delayed')
        self.addCleanup(d.shutdown)
        lock = threading.Lock()
        ran = []
        outcomes = {'cancelled': 0, 'ran': 0}
        all_futures = []

        def worker(seed):
            rng = random.Random(seed)
            mine = []
            for i in range(500):
                delay = rng.choice([0.0, 0.001, 0.01, 0.05])
                f = d.submit_after(delay, ran.append, (seed, i))
                mine.append(f)
                if rng.random() < 0.4:
                    rng.choice(mine).cancel()
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
        for f in all_futures:
            outcomes['cancelled' if f.cancelled() else 'ran'] += 1
        self.assertEqual(4000, outcomes['cancelled'] + outcomes['ran'])
        self.assertEqual(outcomes['ran'], len(ran))
        self.assertEqual(0, d.pending_count())


class FuturistExecutorTest(base.TestCase):
    """The real executor may be any futurist one Nova passes around."""

    def test_synchronous_executor(self):
        d = delayed.DelayedExecutor(futurist.SynchronousExecutor(), 0.0,
                                    name='test-delayed')
        self.addCleanup(d.shutdown)
        self.assertEqual(3, d.submit(lambda: 3).result(timeout=WAIT))
