#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Unit tests for nova_lifecycle.common.dispatch.KeyedDispatcher.

The test package applies Nova's monkey patching according to
OS_NOVA_DISABLE_EVENTLET_PATCHING, so these tests run either with native
threads or with eventlet green threads; make_executor() picks the matching
futurist executor. Ordering is controlled with Events, never with sleeps.
"""

import ast
import collections
import concurrent.futures
import os
import random
import sys
import threading
import time

import fixtures
import futurist
import testtools

from nova_lifecycle.common import dispatch
from nova_lifecycle import concurrency

# Upper bound for waits that are expected to succeed at once; a failure
# then shows up as a test failure rather than a hang.
WAIT = 10


def make_executor(workers, **kwargs):
    """Return a futurist executor with ``workers`` workers for this mode."""
    if concurrency.threading_mode():
        return futurist.ThreadPoolExecutor(workers, **kwargs)
    return futurist.GreenThreadPoolExecutor(workers, **kwargs)


def current_thread():
    """The running thread, or green thread under eventlet.

    eventlet 0.39 (2025.1) gives futurist's green workers the main
    thread's ``threading.current_thread()``; their greenlets differ.
    """
    if concurrency.threading_mode():
        return threading.current_thread()
    import greenlet
    return greenlet.getcurrent()


class ManualExecutor(object):
    """An executor that runs its tasks only when the test says so.

    It makes the order of drain tasks observable and deterministic, and
    can refuse or cancel work like a real executor being shut down.
    """

    def __init__(self):
        self.tasks = collections.deque()
        self.refuse_with = None

    def submit(self, fn, *args, **kwargs):
        if self.refuse_with is not None:
            raise self.refuse_with
        future = concurrent.futures.Future()
        self.tasks.append((future, fn, args, kwargs))
        return future

    def run_next(self):
        future, fn, args, kwargs = self.tasks.popleft()
        if future.set_running_or_notify_cancel():
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

    def run_all(self):
        while self.tasks:
            self.run_next()

    def cancel_all(self):
        while self.tasks:
            self.tasks.popleft()[0].cancel()


class Recorder(object):
    """Thread-safe log of the calls made by handlers."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = []

    def __call__(self, tag):
        with self.lock:
            self.calls.append(tag)
        return tag


class _Bail(BaseException):
    """A BaseException that is not an Exception, like GreenletExit."""


class DispatcherTestCase(testtools.TestCase):

    def setUp(self):
        super(DispatcherTestCase, self).setUp()
        self.useFixture(fixtures.Timeout(30, gentle=True))
        self.logger = self.useFixture(fixtures.FakeLogger())
        self.gates = []
        self.record = Recorder()

    def make_dispatcher(self, workers=2, executor=None, name='test'):
        """Return a dispatcher on a new executor, both cleaned up."""
        if executor is None:
            executor = make_executor(workers)
            self.addCleanup(executor.shutdown, wait=True)
        dispatcher = dispatch.KeyedDispatcher(executor, name=name)
        self.addCleanup(self._stop, dispatcher)
        return dispatcher, executor

    def _stop(self, dispatcher):
        # Open every gate first so no handler is left blocked, then let
        # the dispatcher finish before its executor is shut down.
        for gate in self.gates:
            gate.set()
        if isinstance(dispatcher._executor, ManualExecutor):
            return
        # Wait from a helper thread so that a dispatcher that never gets
        # idle fails this cleanup instead of hanging it (the Timeout
        # fixture's alarm may already have fired).
        idle = threading.Event()

        def stop():
            dispatcher.shutdown(wait=True)
            idle.set()

        thread = threading.Thread(target=stop, daemon=True)
        thread.start()
        self.assertTrue(idle.wait(WAIT), 'dispatcher did not get idle')

    def event(self):
        event = threading.Event()
        self.gates.append(event)
        return event

    def wait_for(self, event):
        self.assertTrue(event.wait(WAIT), 'event not set in time')

    def blocker(self, tag, started, gate):
        """Return a handler that signals start, waits for gate, records."""
        def handler():
            started.set()
            self.assertTrue(gate.wait(WAIT))
            return self.record(tag)
        return handler


class TestSubmit(DispatcherTestCase):
    """Rule 1: submit returns at once, is thread-safe and cheap."""

    def test_returns_future_at_once_while_handler_blocked(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        first = dispatcher.submit('a', self.blocker('a0', started, gate))
        self.wait_for(started)
        # The only worker is blocked: if submit waited for it, we would
        # hang here instead of getting pending futures back.
        futures = [dispatcher.submit(k, self.record, '%s%d' % (k, i))
                   for i in range(1, 6) for k in 'ab']
        for future in futures:
            self.assertIsInstance(future, concurrent.futures.Future)
            self.assertFalse(future.done())
        self.assertTrue(first.running())
        self.assertEqual(10, dispatcher.pending_count())
        self.assertEqual(2, dispatcher.busy_keys())
        gate.set()
        self.assertEqual('a0', first.result(WAIT))
        self.assertEqual(['a1', 'b1', 'a2', 'b2', 'a3', 'b3', 'a4', 'b4',
                          'a5', 'b5'],
                         [f.result(WAIT) for f in futures])

    def test_result_and_arguments_passed_through(self):
        dispatcher, _ = self.make_dispatcher()

        def handler(*args, **kwargs):
            return args, kwargs

        # key and fn are positional-only, so fn may take such keywords.
        future = dispatcher.submit('k', handler, 1, 2, key='v', fn='f')
        self.assertEqual(((1, 2), {'key': 'v', 'fn': 'f'}),
                         future.result(WAIT))

    def test_unhashable_key_leaves_no_state(self):
        dispatcher, _ = self.make_dispatcher()
        self.assertRaises(TypeError, dispatcher.submit, ['a'], self.record,
                          'x')
        self.assertEqual(0, dispatcher.pending_count())
        self.assertEqual(0, dispatcher.busy_keys())
        # Would hang (and time out) if the failed submit were counted.
        self.assertEqual([], dispatcher.shutdown(wait=True))
        self.assertEqual([], self.record.calls)

    def test_submit_from_handler_for_same_key(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        inner = []

        def handler():
            inner.append(dispatcher.submit('a', self.record, 'second'))
            return self.record('first')

        self.assertEqual('first',
                         dispatcher.submit('a', handler).result(WAIT))
        self.assertEqual('second', inner[0].result(WAIT))
        self.assertEqual(['first', 'second'], self.record.calls)


class TestOrdering(DispatcherTestCase):
    """Rule 2: in order per key, concurrent across keys, bounded."""

    def test_one_key_runs_in_order_without_overlap(self):
        dispatcher, _ = self.make_dispatcher(workers=4)
        lock = threading.Lock()
        state = {'active': 0, 'max': 0}
        order = []

        def handler(i):
            with lock:
                state['active'] += 1
                state['max'] = max(state['max'], state['active'])
            # A yield point (not synchronisation): gives a broken
            # dispatcher the chance to start the next item meanwhile.
            time.sleep(0)
            with lock:
                order.append(i)
                state['active'] -= 1
            return i

        futures = [dispatcher.submit('a', handler, i) for i in range(300)]
        self.assertEqual(list(range(300)), [f.result(WAIT) for f in futures])
        self.assertEqual(list(range(300)), order)
        self.assertEqual(1, state['max'])

    def test_different_keys_run_concurrently(self):
        dispatcher, _ = self.make_dispatcher(workers=2)
        a_started, b_started = self.event(), self.event()

        def meet(mine, other):
            # Only returns True if the other key's handler runs meanwhile.
            mine.set()
            return other.wait(WAIT)

        fa = dispatcher.submit('a', meet, a_started, b_started)
        fb = dispatcher.submit('b', meet, b_started, a_started)
        self.assertTrue(fa.result(WAIT))
        self.assertTrue(fb.result(WAIT))

    def test_concurrency_bounded_by_executor_workers(self):
        dispatcher, _ = self.make_dispatcher(workers=2)
        gate = self.event()
        started = {k: self.event() for k in 'abc'}
        futures = {k: dispatcher.submit(k, self.blocker(k, started[k], gate))
                   for k in 'abc'}
        self.wait_for(started['a'])
        self.wait_for(started['b'])
        # Both workers are blocked, so c cannot have started.
        self.assertFalse(started['c'].is_set())
        self.assertFalse(futures['c'].running())
        self.assertEqual(3, dispatcher.busy_keys())
        self.assertEqual(1, dispatcher.pending_count())
        gate.set()
        self.assertEqual(['a', 'b', 'c'],
                         [futures[k].result(WAIT) for k in 'abc'])
        self.assertEqual(['a', 'b', 'c'], sorted(self.record.calls))


class TestFairness(DispatcherTestCase):
    """Rule 3: a busy key goes to the back after each item."""

    def test_busy_key_resubmits_after_one_item(self):
        executor = ManualExecutor()
        dispatcher, _ = self.make_dispatcher(executor=executor)
        for i in range(1, 6):
            dispatcher.submit('a', self.record, 'a%d' % i)
        dispatcher.submit('b', self.record, 'b1')
        self.assertEqual(2, len(executor.tasks))
        executor.run_next()
        # One item ran; a's task went behind b's instead of looping.
        self.assertEqual(['a1'], self.record.calls)
        self.assertEqual(2, len(executor.tasks))
        executor.run_all()
        self.assertEqual(['a1', 'b1', 'a2', 'a3', 'a4', 'a5'],
                         self.record.calls)
        self.assertEqual(0, dispatcher.busy_keys())

    def test_busy_keys_interleave_on_one_worker(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        futures = [dispatcher.submit('a', self.blocker('a1', started, gate))]
        self.wait_for(started)
        for tag in ('a2', 'a3', 'b1', 'b2', 'b3'):
            futures.append(dispatcher.submit(tag[0], self.record, tag))
        gate.set()
        for future in futures:
            future.result(WAIT)
        self.assertEqual(['a1', 'b1', 'a2', 'b2', 'a3', 'b3'],
                         self.record.calls)


class TestFutures(DispatcherTestCase):
    """Rule 4: cancellation, exceptions and results on the Future."""

    def test_cancel_before_start_skips_item(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        f1 = dispatcher.submit('a', self.blocker('a1', started, gate))
        self.wait_for(started)
        f2 = dispatcher.submit('a', self.record, 'a2')
        f3 = dispatcher.submit('a', self.record, 'a3')
        self.assertTrue(f2.cancel())
        gate.set()
        self.assertEqual('a3', f3.result(WAIT))
        self.assertEqual('a1', f1.result(WAIT))
        self.assertTrue(f2.cancelled())
        self.assertEqual(['a1', 'a3'], self.record.calls)

    def test_cancel_of_running_item_fails_and_result_is_set(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        future = dispatcher.submit('a', self.blocker('a1', started, gate))
        self.wait_for(started)
        self.assertTrue(future.running())
        self.assertFalse(future.cancel())
        gate.set()
        self.assertEqual('a1', future.result(WAIT))
        self.assertFalse(future.cancelled())

    def test_exception_is_set_and_key_continues(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        error = ValueError('handler failed')

        def fail():
            raise error

        f1 = dispatcher.submit('a', fail)
        f2 = dispatcher.submit('a', self.record, 'a2')
        f3 = dispatcher.submit('b', self.record, 'b1')
        self.assertIs(error, f1.exception(WAIT))
        self.assertEqual('a2', f2.result(WAIT))
        # The only worker survived and still serves other keys.
        self.assertEqual('b1', f3.result(WAIT))

    def test_base_exception_is_set_and_key_continues(self):
        dispatcher, _ = self.make_dispatcher(workers=1)

        def bail():
            raise _Bail('stop')

        f1 = dispatcher.submit('a', bail)
        f2 = dispatcher.submit('a', self.record, 'a2')
        self.assertIsInstance(f1.exception(WAIT), _Bail)
        self.assertEqual('a2', f2.result(WAIT))
        self.assertEqual('b1',
                         dispatcher.submit('b', self.record, 'b1').result(
                             WAIT))

    def test_key_with_only_cancelled_items_is_released(self):
        executor = ManualExecutor()
        dispatcher, _ = self.make_dispatcher(executor=executor)
        futures = [dispatcher.submit('a', self.record, i) for i in range(3)]
        for future in futures:
            self.assertTrue(future.cancel())
        # Cancelled items count as pending until they are discarded.
        self.assertEqual(3, dispatcher.pending_count())
        executor.run_all()
        self.assertEqual([], self.record.calls)
        self.assertEqual(0, dispatcher.pending_count())
        self.assertEqual(0, dispatcher.busy_keys())


class TestRefusal(DispatcherTestCase):
    """Rule 5: an executor refusing work fails the key's queued items."""

    def test_shut_down_executor_gives_failed_future(self):
        executor = make_executor(1)
        executor.shutdown(wait=True)
        dispatcher, _ = self.make_dispatcher(executor=executor)
        future = dispatcher.submit('a', self.record, 'a1')
        self.assertTrue(future.done())
        self.assertIsInstance(future.exception(), RuntimeError)
        self.assertEqual([], self.record.calls)
        self.assertEqual(0, dispatcher.pending_count())
        self.assertEqual(0, dispatcher.busy_keys())
        self.assertIn('executor refused work', self.logger.output)
        # Nothing is left to wait for.
        self.assertEqual([], dispatcher.shutdown(wait=True))

    def test_refused_resubmit_fails_backlog_and_key_recovers(self):
        refusing = threading.Event()
        rejection = futurist.RejectedSubmission('executor is full')

        def check_and_reject(executor, backlog):
            if refusing.is_set():
                raise rejection

        executor = make_executor(1, check_and_reject=check_and_reject)
        self.addCleanup(executor.shutdown, wait=True)
        dispatcher, _ = self.make_dispatcher(executor=executor)
        started, gate = self.event(), self.event()
        f1 = dispatcher.submit('a', self.blocker('a1', started, gate))
        self.wait_for(started)
        f2 = dispatcher.submit('a', self.record, 'a2')
        f3 = dispatcher.submit('a', self.record, 'a3')
        self.assertTrue(f3.cancel())
        refusing.set()
        gate.set()
        self.assertEqual('a1', f1.result(WAIT))
        # The drain task's re-submission was refused.
        self.assertIs(rejection, f2.exception(WAIT))
        self.assertTrue(f3.cancelled())
        self.assertEqual(0, dispatcher.busy_keys())
        self.assertEqual(0, dispatcher.pending_count())
        # A refused first submission does not raise either.
        f4 = dispatcher.submit('a', self.record, 'a4')
        self.assertIs(rejection, f4.exception(WAIT))
        refusing.clear()
        self.assertEqual('a5',
                         dispatcher.submit('a', self.record, 'a5').result(
                             WAIT))
        self.assertEqual(['a1', 'a5'], self.record.calls)

    def test_any_exception_from_executor_fails_only_that_key(self):
        executor = ManualExecutor()
        dispatcher, _ = self.make_dispatcher(executor=executor)
        fb = dispatcher.submit('b', self.record, 'b1')
        executor.refuse_with = ValueError('odd executor')
        fa = dispatcher.submit('a', self.record, 'a1')
        self.assertIs(executor.refuse_with, fa.exception())
        executor.refuse_with = None
        fa2 = dispatcher.submit('a', self.record, 'a2')
        executor.run_all()
        self.assertEqual('b1', fb.result())
        self.assertEqual('a2', fa2.result())
        self.assertEqual({}, dispatcher._queues)

    def test_drain_task_cancelled_by_executor_cancels_items(self):
        executor = ManualExecutor()
        dispatcher, _ = self.make_dispatcher(executor=executor)
        futures = [dispatcher.submit('a', self.record, i) for i in range(3)]
        executor.cancel_all()
        self.assertTrue(all(f.cancelled() for f in futures))
        self.assertEqual(0, dispatcher.busy_keys())
        self.assertEqual(0, dispatcher.pending_count())
        future = dispatcher.submit('a', self.record, 'again')
        executor.run_all()
        self.assertEqual('again', future.result())
        self.assertEqual(['again'], self.record.calls)


class TestRobustness(DispatcherTestCase):
    """Rule 6: a failure inside the drain machinery never sticks a key."""

    def test_future_resolved_by_caller_while_running(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        f1 = dispatcher.submit('a', self.blocker('a1', started, gate))
        f2 = dispatcher.submit('a', self.record, 'a2')
        self.wait_for(started)
        # A careless caller resolves the future itself, so the dispatcher's
        # own set_result() will raise InvalidStateError.
        f1.set_result('caller')
        gate.set()
        self.assertEqual('a2', f2.result(WAIT))
        self.assertEqual('caller', f1.result())
        self.assertEqual([], dispatcher.shutdown(wait=True))
        self.assertEqual(0, dispatcher.busy_keys())
        self.assertEqual(['a1', 'a2'], self.record.calls)
        self.assertIn('unexpected error dispatching work for key',
                      self.logger.output)

    def test_future_resolved_by_caller_while_queued(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        dispatcher.submit('a', self.blocker('a1', started, gate))
        self.wait_for(started)
        f2 = dispatcher.submit('a', self.record, 'a2')
        f3 = dispatcher.submit('a', self.record, 'a3')
        # Resolving a pending future makes set_running_or_notify_cancel()
        # raise when the dispatcher tries to start it.
        f2.set_exception(KeyError('caller'))
        gate.set()
        self.assertEqual('a3', f3.result(WAIT))
        self.assertEqual([], dispatcher.shutdown(wait=True))
        self.assertEqual(['a1', 'a3'], self.record.calls)
        self.assertEqual(0, dispatcher.pending_count())
        self.assertEqual(0, dispatcher.busy_keys())
        self.assertIn('cannot be started', self.logger.output)


class TestShutdown(DispatcherTestCase):
    """Rule 7: shutdown stops submissions, can cancel, can wait."""

    def test_submit_after_shutdown_raises(self):
        dispatcher, executor = self.make_dispatcher(name='lifecycle')
        self.assertEqual([], dispatcher.shutdown())
        error = self.assertRaises(RuntimeError, dispatcher.submit, 'a',
                                  self.record, 'a1')
        self.assertIn('lifecycle is shut down', str(error))
        self.assertEqual([], self.record.calls)
        # The dispatcher does not own the executor: it still works.
        self.assertEqual(1, executor.submit(len, 'x').result(WAIT))

    def test_shutdown_waits_for_running_and_queued_items(self):
        dispatcher, _ = self.make_dispatcher(workers=2)
        started, gate = self.event(), self.event()
        futures = [dispatcher.submit('a', self.blocker('a1', started, gate))]
        futures += [dispatcher.submit(k, self.record, k + '2') for k in 'ab']
        self.wait_for(started)
        returned = self.event()
        seen = []

        def stop():
            seen.extend(dispatcher.shutdown(wait=True))
            seen.append([f.done() for f in futures])
            returned.set()

        thread = threading.Thread(target=stop)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.assertFalse(returned.is_set())
        gate.set()
        self.wait_for(returned)
        # When shutdown returned, every accepted item had finished.
        self.assertEqual([[True, True, True]], seen)
        self.assertEqual(['a1', 'a2', 'b2'], [f.result() for f in futures])
        self.assertEqual(0, dispatcher.busy_keys())

    def test_shutdown_cancel_futures_returns_cancelled_futures(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        f1 = dispatcher.submit('a', self.blocker('a1', started, gate))
        self.wait_for(started)
        queued = [dispatcher.submit(k, self.record, k) for k in 'aab']
        by_caller = dispatcher.submit('b', self.record, 'by caller')
        self.assertTrue(by_caller.cancel())
        queued.append(dispatcher.submit('c', self.record, 'c'))
        # The gate is closed: waiting here would hang.
        cancelled = dispatcher.shutdown(wait=False, cancel_futures=True)
        self.assertEqual(queued, cancelled)
        self.assertTrue(all(f.cancelled() for f in queued))
        self.assertTrue(f1.running())
        self.assertEqual(0, dispatcher.pending_count())
        gate.set()
        self.assertEqual('a1', f1.result(WAIT))
        self.assertEqual([], dispatcher.shutdown(wait=True,
                                                 cancel_futures=True))
        self.assertEqual(['a1'], self.record.calls)
        self.assertEqual(0, dispatcher.busy_keys())

    def test_shutdown_wait_and_cancel_futures_lets_running_finish(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        f1 = dispatcher.submit('a', self.blocker('a1', started, gate))
        self.wait_for(started)
        f2 = dispatcher.submit('a', self.record, 'a2')
        f3 = dispatcher.submit('b', self.record, 'b1')
        cancelling = self.event()
        f2.add_done_callback(lambda f: cancelling.set())
        result = []

        def stop():
            result.extend(dispatcher.shutdown(wait=True,
                                              cancel_futures=True))
            result.append(f1.done())

        thread = threading.Thread(target=stop)
        thread.start()
        self.addCleanup(thread.join, WAIT)
        self.wait_for(cancelling)
        gate.set()
        thread.join(WAIT)
        self.assertFalse(thread.is_alive())
        self.assertEqual([f2, f3, True], result)
        self.assertEqual('a1', f1.result())
        self.assertEqual(['a1'], self.record.calls)

    def test_shutdown_without_wait_returns_at_once(self):
        dispatcher, _ = self.make_dispatcher(workers=1)
        started, gate = self.event(), self.event()
        f1 = dispatcher.submit('a', self.blocker('a1', started, gate))
        f2 = dispatcher.submit('a', self.record, 'a2')
        self.wait_for(started)
        # The gate is closed: waiting here would hang.
        self.assertEqual([], dispatcher.shutdown(wait=False))
        self.assertFalse(f1.done())
        gate.set()
        # Accepted items still run, re-submissions included.
        self.assertEqual('a2', f2.result(WAIT))
        self.assertEqual([], dispatcher.shutdown(wait=True))
        self.assertEqual(0, dispatcher.busy_keys())

    def test_shutdown_twice_is_harmless(self):
        dispatcher, _ = self.make_dispatcher()
        self.assertEqual([], dispatcher.shutdown())
        self.assertEqual([], dispatcher.shutdown(wait=True,
                                                 cancel_futures=True))
        self.assertEqual([], dispatcher.shutdown(wait=False))
        self.assertRaises(RuntimeError, dispatcher.submit, 'a', len, 'x')

    def test_accepted_items_still_drain_after_shutdown(self):
        executor = ManualExecutor()
        dispatcher, _ = self.make_dispatcher(executor=executor)
        futures = [dispatcher.submit(k, self.record, k + str(i))
                   for i in range(2) for k in 'ab']
        self.assertEqual([], dispatcher.shutdown(wait=False))
        executor.run_all()
        self.assertEqual(['a0', 'b0', 'a1', 'b1'],
                         [f.result() for f in futures])
        self.assertEqual(['a0', 'b0', 'a1', 'b1'], self.record.calls)


class TestMemory(DispatcherTestCase):
    """Rule 8: no state is kept for keys without work."""

    def test_no_state_left_for_many_keys(self):
        dispatcher, _ = self.make_dispatcher(workers=4)
        futures = [dispatcher.submit('key-%d' % i, len, 'x' * (i % 7))
                   for i in range(10000)]
        dispatcher.shutdown(wait=True)
        self.assertEqual([i % 7 for i in range(10000)],
                         [f.result() for f in futures])
        self.assertEqual({}, dispatcher._queues)
        self.assertEqual(0, dispatcher.pending_count())

    def test_key_forgotten_as_soon_as_its_work_is_done(self):
        executor = ManualExecutor()
        dispatcher, _ = self.make_dispatcher(executor=executor)
        for i in range(10000):
            dispatcher.submit('key-%d' % i, self.record, i)
        self.assertEqual(10000, len(dispatcher._queues))
        executor.run_all()
        self.assertEqual(10000, len(self.record.calls))
        self.assertEqual({}, dispatcher._queues)
        self.assertEqual(0, dispatcher.busy_keys())


class TestConcurrencyMode(DispatcherTestCase):
    """Rule 9: works with native threads and with eventlet."""

    def test_mode_matches_environment(self):
        env = os.environ.get('OS_NOVA_DISABLE_EVENTLET_PATCHING', '')
        threading_mode = env.lower() in ('1', 'true', 'yes')
        self.assertEqual(threading_mode, concurrency.threading_mode())
        executor = make_executor(1)
        self.addCleanup(executor.shutdown, wait=True)
        self.assertEqual(threading_mode,
                         not isinstance(executor,
                                        futurist.GreenThreadPoolExecutor))

    def test_primitives_come_from_threading_at_call_time(self):
        dispatcher, _ = self.make_dispatcher()
        # Under eventlet these are green; a natively captured lock would
        # block the whole process instead of one green thread.
        self.assertIsInstance(dispatcher._lock, type(threading.Lock()))
        self.assertIsInstance(dispatcher._idle, threading.Condition)
        future = dispatcher.submit('a', current_thread)
        self.assertIsNot(current_thread(), future.result(WAIT))

    def test_dispatch_imports_only_stdlib(self):
        with open(dispatch.__file__) as source:
            tree = ast.parse(source.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name.split('.')[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split('.')[0])
        self.assertIn('threading', imported)
        allowed = set(sys.stdlib_module_names) | {'oslo_log'}
        self.assertEqual(set(), imported - allowed)


class TestStress(DispatcherTestCase):
    """Many submitters, many keys, some cancellations."""

    def test_many_threads_many_keys(self):
        dispatcher, _ = self.make_dispatcher(workers=4)
        rng = random.Random(1234)
        keys = ['key-%02d' % i for i in range(50)]
        plan = [(i, rng.choice(keys), rng.random() < 0.1)
                for i in range(2000)]
        # Per-key locks make the recorded order the real submission order
        # of each key while submitters of different keys still race.
        key_locks = {key: threading.Lock() for key in keys}
        submitted = collections.defaultdict(list)
        futures = {}
        lock = threading.Lock()
        active = collections.Counter()
        executed = collections.defaultdict(list)
        overlaps = []

        def handler(key, i):
            with lock:
                active[key] += 1
                if active[key] > 1:
                    overlaps.append((key, i))
                executed[key].append(i)
            time.sleep(0)  # A yield point, see the ordering test.
            with lock:
                active[key] -= 1
            if i % 13 == 0:
                raise ValueError(i)
            return i

        go = threading.Event()

        def submitter(part):
            go.wait(WAIT)
            for i, key, cancel in part:
                with key_locks[key]:
                    submitted[key].append(i)
                    futures[i] = dispatcher.submit(key, handler, key, i)
                if cancel:
                    futures[i].cancel()

        threads = [threading.Thread(target=submitter, args=(plan[n::8],))
                   for n in range(8)]
        for thread in threads:
            thread.start()
            self.addCleanup(thread.join, WAIT)
        go.set()
        for thread in threads:
            thread.join(WAIT)
            self.assertFalse(thread.is_alive())
        self.assertEqual([], dispatcher.shutdown(wait=True))

        ran = {i for items in executed.values() for i in items}
        cancelled = {i for i, f in futures.items() if f.cancelled()}
        self.assertEqual([], overlaps)
        self.assertEqual(2000, len(futures))
        self.assertEqual(set(), ran & cancelled)
        self.assertEqual(2000, len(ran) + len(cancelled))
        self.assertGreater(len(cancelled), 0)
        for key in keys:
            self.assertEqual([i for i in submitted[key] if i in ran],
                             executed[key], key)
        for i in ran:
            if i % 13 == 0:
                self.assertIsInstance(futures[i].exception(), ValueError)
            else:
                self.assertEqual(i, futures[i].result())
        self.assertEqual({}, dispatcher._queues)
        self.assertEqual(0, dispatcher.pending_count())
