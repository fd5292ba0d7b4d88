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

"""Run a quick call once its delay has passed, unless cancelled before.

``DelayedExecutor.submit_after(delay, fn, *args)`` returns a
``concurrent.futures.Future`` at once and calls ``fn(*args)`` on the
executor's one scheduler thread when ``delay`` seconds have passed. Until
then ``future.cancel()`` succeeds and the call never happens; it also
drops ``fn`` and ``args`` at once, so a cancelled task keeps nothing its
submitter made alive.

Scope. It is built for many tasks over a few distinct delays (a hold of
15 s and a grace of 1 s, say), each possibly cancelled. Tasks of the same
delay share a FIFO lane: with a monotonic clock their deadlines are in
submission order, so submitting is an append and cancelling clears a
slot, both O(1). A lane drops cleared slots at its head as they come up
and is compacted when cleared slots outnumber live ones, so its memory
stays within about twice the live tasks. The scheduler waits for the
earliest head of all lanes; a lane that empties is dropped.

What it does not do:

* Run anything slow. Due calls run one after the other on the scheduler
  thread, so a call must be quick and must not block (hand real work to
  an executor or a queue from it): a slow one delays every later
  deadline. A call's result or exception goes to its Future only; nothing
  is logged.
* Keep many distinct delays cheap: the scheduler looks at every lane's
  head, so the cost grows with the number of distinct delays in use.
* Follow wall-clock changes or guarantee a deadline: it uses
  ``time.monotonic`` and runs a call at or after its deadline.
* Stop a call that has started: ``cancel()`` then returns False.
* Offer more than one way in: no default delay, no keyword arguments
  (``functools.partial`` carries them), no executor to hand calls to.

No thread starts in the constructor; the named scheduler thread starts
with the first submit and ends after :meth:`DelayedExecutor.shutdown`.
The module knows nothing of Nova and uses the ``threading`` module at
call time, so under eventlet monkey patching the scheduler is a green
thread, as every caller then is.
"""

import collections
from concurrent import futures
import threading
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# A lane is compacted only once it has this many cleared slots (and they
# outnumber its live ones), so that small lanes are never rebuilt.
_COMPACT_MIN_DEAD = 64

# Longest single wait of the scheduler, in seconds; it then looks again.
# Keeps the timeout within what every lock implementation accepts.
_MAX_WAIT = 3600.0

PendingTask = collections.namedtuple('PendingTask', ['future', 'remaining'])
PendingTask.__doc__ = """A task waiting for its deadline.

``remaining`` is the number of seconds left when :meth:`pending` looked.
"""


class _Lane:
    """The waiting tasks of one delay, in deadline order.

    ``slots`` holds Futures; a cancelled or taken one leaves None behind.
    ``slots[head]`` is always a waiting Future while the lane exists.
    """

    __slots__ = ('owner', 'delay', 'slots', 'head', 'dead')

    def __init__(self, owner, delay):
        self.owner = owner
        self.delay = delay
        self.slots = []
        self.head = 0
        self.dead = 0


class _DelayedFuture(futures.Future):
    """A Future whose cancel() also takes its task off its lane."""

    # _lane is None once the task left it: cancelled, taken or shut down.
    __slots__ = ('_fn', '_args', '_lane', '_pos', '_deadline')

    def cancel(self):
        if not super().cancel():
            return False
        lane = self._lane
        if lane is not None and lane.owner._drop(self):
            # Nobody else will: wake concurrent.futures.wait() and
            # as_completed(), which count a cancelled Future as done only
            # once notified.
            self.set_running_or_notify_cancel()
        return True


class DelayedExecutor:
    """Calls ``fn(*args)`` on its scheduler thread after a delay.

    :param name: the name of the scheduler thread.
    """

    def __init__(self, name):
        self._name = name
        self._clock = time.monotonic
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._lanes = {}
        self._shutdown = False
        self._thread = None

    def submit_after(self, delay, fn, /, *args):
        """Schedule ``fn(*args)`` to run ``delay`` seconds from now.

        :returns: a ``concurrent.futures.Future`` for the call.
        :raises ValueError: ``delay`` is negative (or not a number).
        :raises RuntimeError: after :meth:`shutdown`.
        """
        future = _DelayedFuture()
        future._fn = fn
        future._args = args
        with self._lock:
            if self._shutdown:
                raise RuntimeError('cannot schedule new futures after '
                                   'shutdown')
            lane = self._lanes.get(delay)
            if lane is None:
                lane = self._add_lane(delay)
            slots = lane.slots
            future._lane = lane
            future._pos = len(slots)
            # Read under the lock: a lane's deadlines follow its slots.
            future._deadline = self._clock() + delay
            slots.append(future)
        return future

    def pending_count(self):
        """The number of tasks waiting for their deadline."""
        with self._lock:
            return sum(len(lane.slots) - lane.dead
                       for lane in self._lanes.values())

    def pending(self):
        """The waiting tasks as :class:`PendingTask`, soonest first."""
        with self._lock:
            now = self._clock()
            waiting = [future for lane in self._lanes.values()
                       for future in lane.slots[lane.head:]
                       if future is not None]
        waiting.sort(key=lambda future: future._deadline)
        return [PendingTask(future, max(0.0, future._deadline - now))
                for future in waiting]

    def is_alive(self):
        """True while the scheduler thread runs."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def shutdown(self, wait=True, *, cancel_futures=False):
        """Take no more tasks; end the scheduler once none waits.

        As ``concurrent.futures.Executor.shutdown``: tasks already
        submitted still run at their deadlines unless ``cancel_futures``,
        so ``wait=True`` alone may block until the last deadline.

        :param wait: return only once the scheduler thread has ended.
        :param cancel_futures: cancel every task still waiting first.
        """
        cancelled = []
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for lane in self._lanes.values():
                    for future in lane.slots[lane.head:]:
                        if future is not None:
                            future._lane = None
                            future._fn = future._args = None
                            cancelled.append(future)
                self._lanes.clear()
            self._wakeup.notify()
            thread = self._thread
        for future in cancelled:
            # Off its lane, so cancel() leaves the notification to us.
            future.cancel()
            future.set_running_or_notify_cancel()
        if cancelled:
            LOG.debug('%s: shutdown cancelled %d waiting tasks',
                      self._name, len(cancelled))
        if wait and thread is not None:
            thread.join()

    # Called with the lock held.

    def _add_lane(self, delay):
        if not delay >= 0:
            raise ValueError('delay must be >= 0, got %r' % (delay,))
        lane = self._lanes[delay] = _Lane(self, delay)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run,
                                            name=self._name, daemon=True)
            self._thread.start()
        else:
            # Its head may be due before the one the scheduler waits for.
            self._wakeup.notify()
        return lane

    def _remove(self, lane, pos):
        """Clear a slot; move the head past cleared slots, or compact."""
        slots = lane.slots
        slots[pos] = None
        lane.dead += 1
        if pos == lane.head:
            end = len(slots)
            pos += 1
            while pos < end and slots[pos] is None:
                pos += 1
            if pos == end:
                del self._lanes[lane.delay]
                return
            lane.head = pos
        if (lane.dead >= _COMPACT_MIN_DEAD and
                lane.dead * 2 > len(slots)):
            live = [future for future in slots[lane.head:]
                    if future is not None]
            for pos, future in enumerate(live):
                future._pos = pos
            lane.slots = live
            lane.head = 0
            lane.dead = 0

    def _next_due(self):
        """Take the next due Future, or None once shut down and idle."""
        while True:
            lanes = self._lanes
            if not lanes:
                if self._shutdown:
                    return None
                self._wakeup.wait()
                continue
            first = None
            for lane in lanes.values():
                future = lane.slots[lane.head]
                if first is None or future._deadline < first._deadline:
                    first = future
            remaining = first._deadline - self._clock()
            if remaining > 0:
                self._wakeup.wait(min(remaining, _MAX_WAIT))
                continue
            lane = first._lane
            first._lane = None
            self._remove(lane, first._pos)
            return first

    # Called without the lock.

    def _drop(self, future):
        """Take a cancelled Future off its lane; False if it was not on."""
        with self._lock:
            lane = future._lane
            if lane is None:
                return False
            future._lane = None
            future._fn = future._args = None
            self._remove(lane, future._pos)
            return True

    def _run(self):
        while True:
            with self._lock:
                future = self._next_due()
            if future is None:
                return
            _call(future)
            # Nothing of it stays alive while the next deadline is awaited.
            del future


def _call(future):
    """Run a taken Future's call, unless it was cancelled meanwhile."""
    fn, args = future._fn, future._args
    future._fn = future._args = None
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)
