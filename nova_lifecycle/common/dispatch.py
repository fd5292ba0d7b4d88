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

"""Per-key ordered dispatch of work onto a bounded executor.

Work submitted under one key runs strictly in submission order, one item at
a time; work of different keys runs concurrently, bounded by the workers of
the executor the dispatcher is given. Submitting never waits for a handler,
so an event loop (e.g. libvirt's) can hand work over without being blocked.

This module is deliberately generic: it knows nothing of Nova or libvirt and
only uses the standard library. It works with native threads and, under
eventlet monkey patching, with green threads, as every threading primitive
is looked up from the ``threading`` module when it is created.
"""

import collections
import concurrent.futures
import functools
import threading

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class _Item(object):
    """One submitted call and the Future that reports its outcome."""

    __slots__ = ('future', 'fn', 'args', 'kwargs')

    def __init__(self, future, fn, args, kwargs):
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def run(self):
        """Call fn and put its outcome on the future.

        The caller has already moved the future to RUNNING. Exceptions of
        fn belong to the future, not to the worker: they are stored there.
        BaseExceptions that are not Exceptions (SystemExit, GreenletExit,
        ...) are stored too, then re-raised so they are not swallowed.
        """
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            self.future.set_result(result)


class _DrainRun(object):
    """Tells a drain task's done-callback whether the task ever started."""

    __slots__ = ('started',)

    def __init__(self):
        self.started = False


class KeyedDispatcher(object):
    """Run callables in order per key, concurrently across keys.

    Each key with work has a deque of items and exactly one "drain" task
    in (or on its way to) the executor. A drain task runs one item, then
    either re-submits itself behind the other keys' tasks (if its key has
    more items) or forgets the key. So a busy key cannot starve the others
    and no state is kept for idle keys.

    Owner's duties: call ``shutdown()`` (preferably with ``wait=True``)
    before shutting the executor down, since drain tasks re-submit
    themselves; and never call ``shutdown(wait=True)`` from a handler, as
    it would wait for itself.
    """

    def __init__(self, executor, name='dispatcher'):
        """Create a dispatcher that runs its work on ``executor``.

        executor: a concurrent.futures / futurist executor (bounded: its
        max_workers bounds concurrency). The dispatcher does not own it
        (never shuts it down). name: used in log and error messages.
        """
        self._executor = executor
        self._name = name
        self._lock = threading.Lock()
        # Notified, when shut down, each time the dispatcher becomes idle.
        self._idle = threading.Condition(self._lock)
        # key -> deque of _Item. A key is present iff it has a drain task
        # (submitted, queued in the executor or running) or is about to
        # get one; the deque may be empty while its last item runs.
        self._queues = {}
        # Items queued and not yet taken by a drain task, all keys.
        self._pending = 0
        # Items accepted whose future has not been resolved by us yet.
        self._unfinished = 0
        self._shutdown = False

    def __repr__(self):
        return '<%s %s>' % (self.__class__.__name__, self._name)

    def submit(self, key, fn, /, *args, **kwargs):
        """Queue ``fn(*args, **kwargs)`` behind earlier work for ``key``.

        Returns a concurrent.futures.Future at once; it never waits for a
        handler. Cancelling the future before the call starts skips it.
        If the executor refuses the work, the returned future (and any other
        item queued for the key) fails with the executor's exception instead
        of this method raising, so the event source is never disturbed.

        :raises RuntimeError: if the dispatcher is shut down.
        """
        future = concurrent.futures.Future()
        item = _Item(future, fn, args, kwargs)
        with self._lock:
            if self._shutdown:
                raise RuntimeError('%s is shut down' % self._name)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = collections.deque()
                schedule = True
            else:
                schedule = False
            queue.append(item)
            self._pending += 1
            self._unfinished += 1
        if schedule:
            # Outside our lock: the executor has its own locking and may
            # run code (e.g. a rejection policy) we should not hold it for.
            self._schedule(key, queue)
        return future

    def pending_count(self):
        """Return the number of items queued and not started, all keys.

        Items whose future was cancelled count until a drain task discards
        them.
        """
        with self._lock:
            return self._pending

    def busy_keys(self):
        """Return the number of keys that have a drain task in the executor.

        A key whose only item is running still counts: its task is busy.
        """
        with self._lock:
            return len(self._queues)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Stop accepting work; optionally cancel the queue and/or wait.

        As ``concurrent.futures.Executor.shutdown``. With cancel_futures,
        items queued but not started are cancelled
        first; their futures are returned (in submission order per key) so
        the owner can log them. Items already running always finish.
        With wait, return once every accepted item finished (ran, failed
        or was cancelled) and no drain task is left. Calling it again is
        harmless. Returns the futures this call cancelled.
        """
        with self._lock:
            self._shutdown = True
            taken = []
            if cancel_futures:
                for queue in self._queues.values():
                    taken.extend(queue)
                    queue.clear()
                self._pending -= len(taken)
        # Drain tasks left with empty deques will just forget their key.
        cancelled = []
        try:
            for item in taken:
                # cancel() runs done callbacks, so not under our lock.
                already = item.future.cancelled()
                if item.future.cancel() and not already:
                    cancelled.append(item.future)
        finally:
            with self._lock:
                self._unfinished -= len(taken)
                self._notify_if_idle()
        if wait:
            with self._idle:
                while self._unfinished or self._queues:
                    self._idle.wait()
        return cancelled

    # Everything below runs with or for the drain tasks.

    def _notify_if_idle(self):
        # Caller holds self._lock.
        if self._shutdown and not self._unfinished and not self._queues:
            self._idle.notify_all()

    def _schedule(self, key, queue):
        """Hand a drain task for ``key`` to the executor."""
        run = _DrainRun()
        try:
            task = self._executor.submit(self._drain, key, queue, run)
        except Exception as exc:
            LOG.warning('%s: executor refused work for key %r, failing '
                        'the items queued for it: %r', self._name, key, exc)
            self._abandon(key, queue, exc)
            return
        task.add_done_callback(
            functools.partial(self._drain_task_done, key, queue, run))

    def _drain_task_done(self, key, queue, run, task):
        """Release a key whose drain task ended without running.

        An executor can end a task it accepted without calling it: cancel
        it (shutdown with cancel_futures) or fail it (a pool whose workers
        cannot start fails its queue with BrokenThreadPool). The key would
        then wait for that task forever; its items are cancelled or failed
        with the executor's error instead.
        """
        if run.started:
            return
        if task.cancelled():
            LOG.warning('%s: executor cancelled the task of key %r, '
                        'cancelling the items queued for it',
                        self._name, key)
            self._abandon(key, queue, None)
            return
        exc = task.exception() or RuntimeError(
            'executor ended the task without running it')
        LOG.warning('%s: executor dropped the task of key %r, failing the '
                    'items queued for it: %r', self._name, key, exc)
        self._abandon(key, queue, exc)

    def _abandon(self, key, queue, exc):
        """Forget ``key``; fail its items with exc, or cancel them."""
        with self._lock:
            if self._queues.get(key) is queue:
                del self._queues[key]
            items = list(queue)
            queue.clear()
            self._pending -= len(items)
        try:
            for item in items:
                try:
                    if exc is None:
                        item.future.cancel()
                    elif item.future.set_running_or_notify_cancel():
                        item.future.set_exception(exc)
                except Exception:
                    LOG.exception('%s: could not resolve a future of key %r',
                                  self._name, key)
        finally:
            with self._lock:
                self._unfinished -= len(items)
                self._notify_if_idle()

    def _drain(self, key, queue, run):
        """Run the next item of ``key``; then re-submit or release the key.

        Runs in the executor. Whatever goes wrong here, the finally clause
        keeps the key moving so it can never get stuck.
        """
        run.started = True
        ran = False
        try:
            item = self._next_item(key, queue)
            if item is not None:
                ran = True
                item.run()
        except Exception:
            LOG.exception('%s: unexpected error dispatching work for key %r',
                          self._name, key)
        finally:
            self._release(key, queue, ran)

    def _next_item(self, key, queue):
        """Pop the first item that can start, marking its future RUNNING.

        Items whose future was cancelled (or, wrongly, resolved by someone
        else) are discarded. Returns None if the queue runs out.
        """
        discarded = 0
        while True:
            with self._lock:
                self._unfinished -= discarded
                if not queue:
                    return None
                item = queue.popleft()
                self._pending -= 1
            try:
                if item.future.set_running_or_notify_cancel():
                    return item
            except Exception:
                # Only a future resolved behind our back gets here.
                LOG.exception('%s: discarding an item of key %r whose '
                              'future cannot be started', self._name, key)
            discarded = 1

    def _release(self, key, queue, ran):
        """Re-submit the drain task if ``key`` has more work, else forget."""
        with self._lock:
            if ran:
                self._unfinished -= 1
            if self._queues.get(key) is not queue:
                resubmit = False  # Already abandoned; nothing to do.
            elif queue:
                resubmit = True
            else:
                del self._queues[key]
                resubmit = False
            self._notify_if_idle()
        if resubmit:
            # To the back of the executor's queue: fairness across keys.
            self._schedule(key, queue)
