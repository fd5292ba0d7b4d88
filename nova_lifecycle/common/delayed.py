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

"""A delaying, cancellable front for any executor.

``DelayedExecutor.submit`` returns a Future at once and hands the task to a
real executor (a concurrent.futures or futurist one, passed in) only when
its delay has passed. Until then ``future.cancel()`` means the task never
runs. With native threads a running task cannot be stopped, so the delay is
the only window in which cancelling is certain.

One scheduler thread serves every task: a heap of deadlines, no thread or
timer per task. Cancelled tasks release their callable and arguments at
once; their heap slots are dropped lazily and the heap is rebuilt when more
than half of it is dead, which keeps submit and cancel O(log n) amortised.

The module knows nothing of Nova or libvirt. It uses the ``threading``
module at call time, so under eventlet monkey patching the scheduler is a
green thread, as every caller then is.
"""

from concurrent import futures
import functools
import heapq
import itertools
import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Rebuilding the heap is O(n); do it only when dead slots dominate and the
# heap is big enough for the memory to matter.
_COMPACT_MIN_DEAD = 64


class _Task:
    """One submitted task: its Future and, until handed over, its call."""

    __slots__ = ('future', 'call', 'deadline', 'in_heap', '__weakref__')

    def __init__(self, future, call, deadline):
        self.future = future
        self.call = call
        self.deadline = deadline
        self.in_heap = True


class PendingTask:
    """A read-only view of a task still waiting for its deadline."""

    __slots__ = ('future', 'remaining', 'description')

    def __init__(self, future, remaining, description):
        self.future = future
        self.remaining = remaining
        self.description = description

    def __repr__(self):
        return '<PendingTask %s in %.3fs>' % (self.description,
                                              self.remaining)


def _describe(call):
    fn, args, _kwargs = call
    name = getattr(fn, '__qualname__', None) or repr(fn)
    if args:
        return '%s(%r%s)' % (name, args[0], ', ...' if len(args) > 1 else '')
    return '%s()' % name


def _run_task(future, fn, args, kwargs):
    """Run on the real executor; a Future cancelled meanwhile is skipped."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _settle_unrun(future, handed):
    """Done-callback of the executor's Future: end ours if it never ran.

    An executor can end a task it accepted without running it: cancelled
    (shutdown with cancel_futures) or failed (a pool whose workers cannot
    start fails its queue). ``_run_task`` then never resolved ``future``,
    nor notified the waiters of a cancel made after the hand-over; both
    happen here, so no Future of ours is left pending.
    """
    if not handed.cancelled() and handed.exception() is None:
        return  # _run_task ran: it resolved or notified ``future``.
    if future.done() and not future.cancelled():
        return
    if handed.cancelled() or future.cancelled():
        future.cancel()
        future.set_running_or_notify_cancel()
    elif future.set_running_or_notify_cancel():
        future.set_exception(handed.exception())


class DelayedExecutor:
    """Hands tasks to ``executor`` once their delay has passed.

    :param executor: runs the tasks; not owned, so never shut down here.
    :param delay: default delay in seconds for :meth:`submit`.
    :param name: name of the scheduler thread.
    :param clock: monotonic clock in seconds (tests may replace it).

    Shutdown policy: ``shutdown(cancel_pending=True)`` (the default)
    cancels every task still waiting and returns their Futures so the owner
    can say what was dropped; ``cancel_pending=False`` lets each waiting
    task run at its own deadline and, with ``wait=True``, returns once the
    last one has been handed over. Either way no task is silently lost:
    each Future ends cancelled, with the task's result or with its error.
    """

    def __init__(self, executor, delay, name='delayed-executor',
                 clock=time.monotonic):
        if delay < 0:
            raise ValueError('delay must be >= 0, got %r' % (delay,))
        self._executor = executor
        self._delay = delay
        self._name = name
        self._clock = clock
        self._cond = threading.Condition()
        self._heap = []
        self._sequence = itertools.count()
        self._dead = 0
        self._shutdown = False
        self._thread = None

    @property
    def delay(self):
        return self._delay

    def submit(self, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` after the default delay."""
        return self.submit_after(self._delay, fn, *args, **kwargs)

    def submit_after(self, delay, fn, /, *args, **kwargs):
        """Schedule ``fn(*args, **kwargs)`` after ``delay`` seconds."""
        if delay < 0:
            raise ValueError('delay must be >= 0, got %r' % (delay,))
        future = futures.Future()
        with self._cond:
            if self._shutdown:
                raise RuntimeError('%s is shut down' % self._name)
            task = _Task(future, (fn, args, kwargs), self._clock() + delay)
            entry = (task.deadline, next(self._sequence), task)
            heapq.heappush(self._heap, entry)
            self._ensure_thread()
            if self._heap[0] is entry:
                self._cond.notify()
        future.add_done_callback(functools.partial(self._forget, task))
        return future

    def pending_count(self):
        """Tasks waiting for their deadline (cancelled ones excluded)."""
        with self._cond:
            return len(self._heap) - self._dead

    def pending(self):
        """Snapshot of the waiting tasks, soonest first, for reports."""
        now = self._clock()
        with self._cond:
            entries = sorted(e for e in self._heap if e[2].call is not None)
            return [PendingTask(t.future, max(0.0, t.deadline - now),
                                _describe(t.call))
                    for _d, _s, t in entries]

    def is_alive(self):
        """True while the scheduler thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def shutdown(self, wait=True, cancel_pending=True):
        """Stop taking tasks; see the class docstring for the policy.

        :returns: the Futures this call cancelled.
        """
        with self._cond:
            self._shutdown = True
            waiting = [t.future for _d, _s, t in self._heap
                       if t.call is not None]
            self._cond.notify_all()
            thread = self._thread
        cancelled = []
        if cancel_pending:
            cancelled = [f for f in waiting if f.cancel()]
        if wait and thread is not None:
            thread.join()
        return cancelled

    def _ensure_thread(self):
        # Called with the condition held.
        if self._thread is None:
            self._thread = threading.Thread(target=self._schedule,
                                            name=self._name, daemon=True)
            self._thread.start()

    def _forget(self, task, future):
        """Done-callback: drop a cancelled task's call and Future at once."""
        if not future.cancelled():
            return
        with self._cond:
            task.call = None
            if not task.in_heap:
                return
            # Wakes concurrent.futures.wait() and as_completed() callers,
            # which count a cancelled Future as done only once notified.
            # A task already taken off the heap is notified by whoever runs
            # or drops it.
            future.set_running_or_notify_cancel()
            # Until the heap drops its slot, keep nothing the caller made.
            task.future = None
            if self._heap[0][2] is task:
                # The scheduler waits for this deadline; let it move on.
                self._cond.notify()
            self._dead += 1
            if (self._dead >= _COMPACT_MIN_DEAD and
                    self._dead * 2 > len(self._heap)):
                self._heap = [e for e in self._heap if e[2].call is not None]
                heapq.heapify(self._heap)
                self._dead = 0

    def _next_due(self):
        """Pop the next due task, or None when there will be no more.

        Called with the condition held; waits on it until a deadline.
        """
        while True:
            heap = self._heap
            if heap and heap[0][2].call is None:
                heapq.heappop(heap)[2].in_heap = False
                self._dead -= 1
                continue
            if not heap:
                if self._shutdown:
                    return None
                self._cond.wait()
                continue
            remaining = heap[0][0] - self._clock()
            if remaining > 0:
                self._cond.wait(remaining)
                continue
            task = heapq.heappop(heap)[2]
            task.in_heap = False
            return task

    def _schedule(self):
        while True:
            with self._cond:
                task = self._next_due()
            if task is None:
                return
            self._hand_over(task)

    def _hand_over(self, task):
        call, task.call = task.call, None
        future = task.future
        if call is None or future.cancelled():
            future.set_running_or_notify_cancel()
            return
        fn, args, kwargs = call
        try:
            handed = self._executor.submit(_run_task, future, fn, args,
                                           kwargs)
        except Exception as exc:
            LOG.warning('%s: executor refused %s: %s',
                        self._name, _describe(call), exc)
            if future.set_running_or_notify_cancel():
                future.set_exception(exc)
            return
        handed.add_done_callback(functools.partial(_settle_unrun, future))
