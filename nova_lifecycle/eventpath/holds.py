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

"""STOPPED events held per instance; a later event of the instance ends it.

A reboot sends STOPPED then STARTED. Nova holds every STOPPED for a while
so the STARTED can cancel it; :class:`HeldStops` is that rule around one
dict, with the plugin's additions: the hold's length is chosen per event,
a hold can be brought forward when the driver's operations on the
instance end, an event whose delivery failed for a passing reason waits
there for its next attempt (:meth:`HeldStops.hold_again`), and nothing
held is lost at shutdown.

Whoever takes a hold out of the dict ends its ledger entry: the timer
(handing the event on), a later event (cancelled, superseded) or
:meth:`HeldStops.close` (cancelled by shutdown). So each ends exactly once.
"""

import threading
import time

from nova.virt import event as virtevent
from oslo_log import log as logging

from nova_lifecycle.common import delayed

LOG = logging.getLogger(__name__)

REASON_SHUTDOWN = 'shutdown'


class _Hold:
    __slots__ = ('event', 'entry', 'deadline', 'timer', 'retry')

    def __init__(self, event, entry, deadline, retry=False):
        self.event = event
        self.entry = entry
        self.deadline = deadline
        self.timer = None
        self.retry = retry

    @property
    def kind(self):
        """What log lines call it: STOPPED, or the retried event's name."""
        return self.event.get_name() if self.retry else 'STOPPED'


def is_stopped(event):
    """True for Nova's STOPPED lifecycle event."""
    return (isinstance(event, virtevent.LifecycleEvent) and
            event.transition == virtevent.EVENT_LIFECYCLE_STOPPED)


class HeldStops:
    """At most one held STOPPED per instance.

    :param forward: ``forward(event, entry)`` takes an event on (the
        dispatcher); called with this object's lock held, so a released
        STOPPED and a later event of the same instance reach it in order.
        It must not block.
    :param name: name of the timer thread.
    """

    def __init__(self, forward, name, clock=time.monotonic):
        self._forward = forward
        self._clock = clock
        # Re-entered when the event handed on ends at once (its entry
        # settled, or held again, within ``forward``).
        self._lock = threading.RLock()
        self._held = {}
        # The last lifecycle event admitted per instance, until it ends:
        # only that one may be delivered again after a failure. Its own
        # lock, taken last and never held while calling out: an entry may
        # end on any thread, an executor's included, while it holds locks
        # of its own.
        self._latest = {}
        self._latest_lock = threading.Lock()
        self._timer = delayed.DelayedExecutor(name)
        self._closed = False

    def admit(self, event, entry, hold_for):
        """A new event of an instance: it ends that instance's held STOPPED.

        A STOPPED is then held for ``hold_for(event)`` seconds; any other
        event goes on at once.
        """
        superseded = None
        with self._lock:
            if self._closed:
                closed = True
            else:
                closed = False
                if isinstance(event, virtevent.LifecycleEvent):
                    superseded = self._held.pop(event.uuid, None)
                    with self._latest_lock:
                        self._latest[event.uuid] = event
                if is_stopped(event):
                    self._hold(event, entry, hold_for(event))
                else:
                    self._forward(event, entry)
        if closed:
            LOG.info('Event %s for instance %s arrived during shutdown; '
                     'dropped.', event, event.uuid)
            entry.cancel(REASON_SHUTDOWN)
        if superseded is not None:
            superseded.timer.cancel()
            reason = 'superseded by %s' % event.get_name()
            LOG.debug('%s event for instance %s cancelled: %s',
                      superseded.kind, event.uuid, reason)
            superseded.entry.cancel(reason)

    def hold_again(self, event, entry, delay):
        """Hold an event whose delivery failed, to hand it on after ``delay``.

        Only the instance's last lifecycle event is held again, and a later
        event ends the hold as it ends a held STOPPED.

        :returns: None when held; else the reason it is not (the caller
            ends the entry): superseded by a later event, or shutdown.
        """
        with self._lock:
            if self._closed:
                return REASON_SHUTDOWN
            with self._latest_lock:
                latest = self._latest.get(event.uuid)
            if latest is not event:
                return 'superseded by %s' % (
                    latest.get_name() if latest is not None else 'an event')
            self._hold(event, entry, delay, retry=True)
        return None

    def ended(self, event):
        """``event`` has ended: forget it as its instance's last event."""
        with self._latest_lock:
            if self._latest.get(event.uuid) is event:
                del self._latest[event.uuid]

    def _hold(self, event, entry, delay, retry=False):
        hold = _Hold(event, entry, self._clock() + delay, retry)
        try:
            hold.timer = self._timer.submit_after(delay, self._due, hold)
        except RuntimeError as exc:
            LOG.error('Cannot hold %s event for instance %s: %s',
                      event.get_name(), event.uuid, exc)
            entry.fail(exc)
            return
        self._held[event.uuid] = hold

    def _due(self, hold):
        with self._lock:
            if self._held.get(hold.event.uuid) is not hold:
                return  # Superseded, or brought forward and already out.
            del self._held[hold.event.uuid]
            self._forward(hold.event, hold.entry)

    def bring_forward(self, uuid, delay):
        """Hand on the held STOPPED of ``uuid`` within ``delay`` from now.

        :returns: True if its deadline moved; never later than it was.
        """
        with self._lock:
            hold = self._held.get(uuid)
            deadline = self._clock() + delay
            if hold is None or self._closed or hold.deadline <= deadline:
                return False
            old = hold.timer
            try:
                hold.timer = self._timer.submit_after(delay, self._due, hold)
            except RuntimeError:
                return False
            hold.deadline = deadline
        old.cancel()
        return True

    def held(self, retries=False):
        """(instance uuid, seconds left) per held STOPPED, soonest first.

        With ``retries``: per event waiting to be delivered again instead.
        """
        now = self._clock()
        with self._lock:
            holds = sorted((h for h in self._held.values()
                            if h.retry == retries),
                           key=lambda h: h.deadline)
        return [(h.event.uuid, max(0.0, h.deadline - now)) for h in holds]

    def __len__(self):
        with self._lock:
            return len(self._held)

    def close(self):
        """Cancel every held event, one log line each; stop the timer."""
        with self._lock:
            self._closed = True
            holds, self._held = list(self._held.values()), {}
            with self._latest_lock:
                self._latest.clear()
        for hold in holds:
            hold.timer.cancel()
            LOG.info('Pending %s event for instance %s dropped by '
                     'shutdown; the power state sync at the next start-up '
                     'reconciles it.', hold.kind, hold.event.uuid)
            hold.entry.cancel(REASON_SHUTDOWN)
        self._timer.shutdown(wait=True, cancel_futures=True)

    def is_alive(self):
        """True while the timer thread runs."""
        return self._timer.is_alive()
