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

"""The path of an instance event from libvirt's loop to the listener.

    queue_event (any thread, never blocks)
      -> inbox (native -> service thread under eventlet)
      -> intake: a later lifecycle event cancels a held STOPPED;
                 STOPPED is held for ``stopped_event_delay``
      -> per-instance ordered dispatch on a bounded pool
      -> deliver (the driver's call into the compute manager)

Every event received is counted in an :class:`EventLedger` exactly once
more: delivered, cancelled with a reason, or failed with the error.
"""

import functools
import logging
import threading

from nova.virt import event as virtevent

from nova_lifecycle.common import delayed
from nova_lifecycle.common import dispatch
from nova_lifecycle.common import inbox
from nova_lifecycle.common import ledger
from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events

LOG = logging.getLogger(__name__)

REASON_SHUTDOWN = 'shutdown'
REASON_NO_LISTENER = 'no listener'
REASON_NO_TRANSITION = 'no Nova transition'
# Not an end: the same event was held again with another delay.
REASON_RESCHEDULED = 'rescheduled'

# Most libvirt SHUTDOWN details kept while waiting for their STOPPED.
MAX_SHUTDOWN_NOTES = 10000


class BadLifecycleEvent(Exception):
    """libvirt sent an event the plugin could not read."""


class _HeldStop:
    """A STOPPED event waiting for its delay, and why it ended early."""

    __slots__ = ('event', 'future', 'reason')

    def __init__(self, event):
        self.event = event
        self.future = None
        self.reason = None


def _uuid(event):
    return getattr(event, 'uuid', None)


def _is_stopped(event):
    return (isinstance(event, virtevent.LifecycleEvent) and
            event.transition == virtevent.EVENT_LIFECYCLE_STOPPED)


class EventPipeline:
    """Carries instance events to ``deliver`` in per-instance order.

    :param deliver: called with each event on a dispatch worker; returns
        True when a listener took it, False when there was none; an
        exception means the listener failed.
    :param stopped_event_delay: seconds a STOPPED event is held.
    :param workers: most events delivered at the same time.
    :param green: True under eventlet (the inbox must bridge threads).
    :param route_other: called on the service side with anything queued
        that is not an instance event (libvirt connection-closed notices).
    :param hold_for: ``hold_for(event)`` -> seconds to hold that STOPPED;
        by default every STOPPED waits ``stopped_event_delay``.
    :param recheck: ``recheck(event)`` runs on the dispatch worker right
        before a STOPPED is delivered; a string it returns is a reason to
        cancel the event instead (e.g. the domain runs again).
    :param watch: ``watch(event)`` sees every instance event as it comes
        in, before any hold (e.g. to wake a power-off waiting for it); it
        must not block.
    """

    def __init__(self, deliver, stopped_event_delay, workers, green,
                 route_other=None, name='lifecycle', hold_for=None,
                 recheck=None, watch=None):
        self._deliver = deliver
        self._watch = watch
        self._route_other = route_other
        self._hold_for = hold_for
        self._recheck = recheck
        self._shutdown_notes = {}
        self._name = name
        self.ledger = ledger.EventLedger()
        self._lock = threading.Lock()
        self._held = {}
        self._stopping = False
        self._reported = set()
        self._executor = concurrency.make_executor(workers, name + '-dispatch')
        self._dispatcher = dispatch.KeyedDispatcher(self._executor,
                                                    name + '-dispatch')
        self._stopped_event_delay = stopped_event_delay
        # A due STOPPED runs _release on the scheduler thread, which only
        # queues it on the dispatcher: quick, as the scheduler requires.
        self._delayed = delayed.DelayedExecutor(name + '-delayed')
        self._inbox = inbox.make_inbox(self._take, name + '-inbox', green)
        self._started = False

    def start(self):
        if not self._started:
            self._started = True
            self._inbox.start()

    def queue_event(self, item):
        """Accept an item from any thread, libvirt's loop included.

        Never raises into libvirt's loop: once the pipeline has stopped an
        instance event is counted as cancelled by shutdown with a log line
        naming the instance (what the direct inbox does in both modes), and
        any other item (a connection notice) is ignored.
        """
        try:
            self._inbox.put(item)
        except RuntimeError:
            # Only a stopped inbox refuses.
            if isinstance(item, virtevent.InstanceEvent):
                self.ledger.receive()
                self._drop_at_shutdown(item)
            else:
                LOG.debug('%r arrived after shutdown; ignored.', item)

    def stop(self, timeout=30):
        """Stop taking events and wind down every thread of the pipeline.

        Events already accepted are delivered (when a listener is still
        registered) or cancelled; each held STOPPED is cancelled with one
        log line naming the instance: the next power-state sync at start-up
        reconciles it.
        """
        self._inbox.stop(timeout)
        with self._lock:
            self._stopping = True
            held, self._held = list(self._held.values()), {}
        for stop in held:
            stop.reason = REASON_SHUTDOWN
            if stop.future.cancel():
                LOG.info('Pending STOPPED event for instance %s dropped by '
                         'shutdown; the power state sync at the next '
                         'start-up reconciles it.', stop.event.uuid)
        self._delayed.shutdown(wait=True, cancel_futures=True)
        self._dispatcher.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    def threads_alive(self):
        """Names of the pipeline's threads still running."""
        alive = []
        if self._inbox.is_alive():
            alive.append(self._name + '-inbox')
        if self._delayed.is_alive():
            alive.append(self._name + '-delayed')
        # Native dispatch workers; a green pool's end with its shutdown.
        alive.extend(sorted(thread.name for thread in getattr(
            self._executor, '_threads', ()) if thread.is_alive()))
        return alive

    def held_stops(self):
        """(instance uuid, seconds left) per held STOPPED, soonest first."""
        with self._lock:
            uuid_of = {stop.future: uuid for uuid, stop in self._held.items()}
        return [(uuid_of[p.future], p.remaining)
                for p in self._delayed.pending() if p.future in uuid_of]

    def stats(self):
        stats = self.ledger.snapshot()
        stats['held_stopped'] = self._delayed.pending_count()
        stats['dispatch_queue'] = self._dispatcher.pending_count()
        return stats

    # Intake

    def _take(self, item):
        if isinstance(item, libvirt_events.ShutdownNotice):
            with self._lock:
                notes = self._shutdown_notes
                notes.pop(item.uuid, None)
                notes[item.uuid] = item.libvirt_detail
                # A note waits for its domain's next event; one whose event
                # never comes (domain gone meanwhile) must not stay forever.
                if len(notes) > MAX_SHUTDOWN_NOTES:
                    del notes[next(iter(notes))]
        elif isinstance(item, virtevent.InstanceEvent):
            self._intake(item)
        elif self._route_other is not None:
            self._route_other(item)
        else:
            LOG.warning('Dropping %r: not an instance event', item)

    def _log_once(self, key, level, msg, *args):
        if key not in self._reported:
            self._reported.add(key)
            LOG.log(level, msg, *args)

    def _intake(self, event):
        self.ledger.receive()
        if isinstance(event, libvirt_events.DomainLifecycleEvent):
            if not self._readable(event):
                return
        if self._watch is not None:
            try:
                self._watch(event)
            except Exception:
                LOG.exception('Watching event %s of instance %s failed',
                              event, event.uuid)
        with self._lock:
            if self._stopping:
                stopping = True
            else:
                stopping = False
                if isinstance(event, libvirt_events.DomainLifecycleEvent):
                    event.shutdown_detail = self._shutdown_notes.pop(
                        event.uuid, None)
                superseded = self._supersede(event)
                if _is_stopped(event):
                    self._hold(event)
                else:
                    self._dispatch(event)
        if stopping:
            self._drop_at_shutdown(event)
        elif superseded is not None:
            superseded.future.cancel()

    def _drop_at_shutdown(self, event):
        """A received event that came after the stop: cancelled, logged."""
        LOG.info('Event %s for instance %s arrived during shutdown; '
                 'dropped.', event, _uuid(event))
        self.ledger.cancel(REASON_SHUTDOWN)

    def _readable(self, event):
        """Report and account an event that cannot go on; True if it can."""
        if event.uuid is None:
            LOG.warning('Ignoring libvirt %s event: %s',
                        event.detail_name, event.error)
            self.ledger.fail(BadLifecycleEvent(event.error))
            return False
        if event.error is not None:
            LOG.warning('libvirt %s event for instance %s handled as %s: %s',
                        event.detail_name, event.uuid, event.get_name(),
                        event.error)
        if event.transition is None:
            self._log_once(
                ('type', event.libvirt_event), logging.WARNING,
                'Ignoring libvirt event %s for instance %s: Nova has no '
                'lifecycle transition for it (reported once per type).',
                event.detail_name, event.uuid)
            self.ledger.cancel(REASON_NO_TRANSITION)
            return False
        if not event.is_known:
            self._log_once(
                ('detail', event.libvirt_event, event.libvirt_detail),
                logging.INFO,
                'libvirt event %s for instance %s has a detail this plugin '
                'does not know; handled as %s (reported once).',
                event.detail_name, event.uuid, event.get_name())
        return True

    def _supersede(self, event):
        """Take the held STOPPED of this instance off hold, if any.

        Called with the lock held; the caller cancels it after releasing
        the lock. Should the delay run out first, :meth:`_release` finds
        the event no longer held and drops it all the same.
        """
        if not isinstance(event, virtevent.LifecycleEvent):
            return None
        stop = self._held.pop(event.uuid, None)
        if stop is not None:
            stop.reason = 'superseded by %s' % event.get_name()
        return stop

    def _hold(self, event, delay=None):
        if delay is None:
            delay = (self._hold_for(event) if self._hold_for is not None
                     else self._stopped_event_delay)
        stop = _HeldStop(event)
        try:
            stop.future = self._delayed.submit_after(delay, self._release,
                                                     stop)
        except RuntimeError as exc:
            LOG.error('Cannot hold STOPPED event for instance %s: %s',
                      event.uuid, exc)
            self.ledger.fail(exc)
            return
        self._held[event.uuid] = stop
        stop.future.add_done_callback(functools.partial(self._held_done,
                                                        stop))

    def _release(self, stop):
        """The delay ran out: deliver unless something superseded it.

        :returns: True when handed to the dispatcher, False when it was
            superseded, None when a rescheduled copy took its place.
        """
        with self._lock:
            if self._held.get(stop.event.uuid) is not stop:
                return None if stop.reason == REASON_RESCHEDULED else False
            del self._held[stop.event.uuid]
            self._dispatch(stop.event)
        return True

    def expedite(self, uuid, delay):
        """Hold the STOPPED of ``uuid``, if any, for ``delay`` from now.

        :returns: True if a held STOPPED was rescheduled.
        """
        with self._lock:
            old = self._held.get(uuid)
            if old is None or self._stopping:
                return False
            old.reason = REASON_RESCHEDULED
            del self._held[uuid]
            self._hold(old.event, delay)
        old.future.cancel()
        return True

    def _held_done(self, stop, future):
        if (stop.reason == REASON_RESCHEDULED and
                (future.cancelled() or future.result() is None)):
            return
        if not future.cancelled() and future.exception() is not None:
            LOG.error('Held STOPPED event for instance %s failed: %s',
                      stop.event.uuid, future.exception())
            self.ledger.fail(future.exception())
        elif future.cancelled() or not future.result():
            reason = stop.reason or REASON_SHUTDOWN
            LOG.debug('STOPPED event for instance %s cancelled: %s',
                      stop.event.uuid, reason)
            self.ledger.cancel(reason)

    # Dispatch

    def _dispatch(self, event):
        deliver = self._deliver
        if (self._recheck is not None and
                isinstance(event, virtevent.LifecycleEvent) and
                event.transition == virtevent.EVENT_LIFECYCLE_STOPPED):
            deliver = self._deliver_rechecked
        try:
            future = self._dispatcher.submit(event.uuid, deliver, event)
        except RuntimeError as exc:
            LOG.error('Cannot dispatch event %s for instance %s: %s',
                      event, event.uuid, exc)
            self.ledger.fail(exc)
            return
        future.add_done_callback(functools.partial(self._dispatched, event))

    def _deliver_rechecked(self, event):
        """Deliver a STOPPED only if a look at the domain still agrees.

        :returns: what ``deliver`` returns, or the reason not to deliver.
        """
        reason = self._recheck(event)
        if reason:
            return reason
        return self._deliver(event)

    def _dispatched(self, event, future):
        if future.cancelled():
            LOG.info('Event %s for instance %s dropped by shutdown.',
                     event, event.uuid)
            self.ledger.cancel(REASON_SHUTDOWN)
            return
        error = future.exception()
        if error is not None:
            LOG.error('Handling event %s for instance %s failed: %s',
                      event, event.uuid, error, exc_info=error)
            self.ledger.fail(error)
        elif isinstance(future.result(), str):
            LOG.info('Event %s for instance %s not delivered: %s.',
                     event, event.uuid, future.result())
            self.ledger.cancel(future.result())
        elif future.result():
            self.ledger.deliver()
        elif _is_stopped(event):
            # The compute manager unregisters first when nova-compute
            # stops; a STOPPED must not vanish without a word.
            LOG.info('STOPPED event for instance %s dropped: no compute '
                     'manager listens; the power state sync at the next '
                     'start-up reconciles it.', event.uuid)
            self.ledger.cancel(REASON_NO_LISTENER)
        else:
            LOG.debug('No listener for event %s of instance %s; dropped.',
                      event, event.uuid)
            self.ledger.cancel(REASON_NO_LISTENER)
