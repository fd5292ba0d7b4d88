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

"""The path of an instance event from libvirt's loop to Nova's handler.

    queue (any thread, libvirt's loop included; never blocks)
      -> inbox (under eventlet: native thread -> one green thread)
      -> intake: unreadable events end here; waiters of a STOPPED wake
      -> holds: a later event ends the instance's held STOPPED; a STOPPED
                is held as long as the policy says
      -> dispatch: per-instance order on a bounded pool
      -> deliver (the driver's call into the compute manager); a STOPPED
         is first checked against the live domain
      -> a delivery that failed for a passing reason (the message bus or
         the database away) goes back to the holds for another attempt

:class:`EventPath` owns every stage and its threads; the driver gives it
the ``[lifecycle]`` options and two functions, and uses :meth:`queue`,
:meth:`track` and :meth:`stop_waiter`. Each event received gets a ledger
entry that ends exactly once (delivered, cancelled with a reason, failed
with the error); :meth:`status` is what reports and tests read.
"""

import collections
import dataclasses
import functools
import threading
import time

from nova.virt import event as virtevent
from oslo_log import log as logging

from nova_lifecycle.common import dispatch
from nova_lifecycle.common import histogram
from nova_lifecycle.common import inbox
from nova_lifecycle.common import ledger
from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import holds
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import operations
from nova_lifecycle.eventpath import policy
from nova_lifecycle.eventpath import stop_waiters

LOG = logging.getLogger(__name__)

REASON_SHUTDOWN = holds.REASON_SHUTDOWN
REASON_NO_LISTENER = 'no listener'
REASON_NO_TRANSITION = 'no Nova transition'
# Most instances named in the log for events that came after stop().
MAX_LATE_LOGGED = 100
# How often a waiter looks at the counts once late events may come.
LATE_RECHECK = 0.05


class BadLifecycleEvent(Exception):
    """libvirt sent an event the plugin could not read."""


@dataclasses.dataclass(frozen=True)
class PathStatus:
    """What the event path is doing, as plain data (see :meth:`status`).

    ``counts``: the ledger (received, delivered, cancelled, failed,
    pending, cancelled_by_reason, failed_by_error, double_ends);
    ``held``: (instance uuid, seconds left) per held STOPPED, soonest
    first; ``dispatch_queue``: events waiting for a worker;
    ``operations``: {uuid: [driver operations in progress]};
    ``stop_waiters``: clean shutdowns waiting for a STOPPED;
    ``stopped_by_reason``: STOPPED events delivered, by why libvirt says
    the domain stopped (guest shut down by itself, guest crashed, ...);
    ``delivery_latency``: seconds from libvirt's callback to the start of
    the handler, a histogram (``Histogram.snapshot``; a STOPPED's includes
    its hold);
    ``retrying``: (instance uuid, seconds left) per event waiting to be
    delivered again after a failure; ``retries``: attempts made again,
    by the error that made them necessary;
    ``threads``: the path's threads still running.
    """

    counts: dict
    held: list
    dispatch_queue: int
    dispatching: int
    operations: dict
    stop_waiters: int
    stopped_by_reason: dict
    delivery_latency: dict
    retrying: list
    retries: dict
    threads: list


class EventPath:
    """Owns the way of instance events from libvirt to ``deliver``.

    :param conf: the ``[lifecycle]`` option group (or any object with its
        attributes), read live.
    :param deliver: ``deliver(event)`` on a dispatch worker: True when a
        listener took it, False when none listens; an exception means the
        listener failed.
    :param live_state: ``live_state(uuid)`` -> libvirt's state number of
        the domain, None if there is none; read before a held STOPPED is
        delivered.
    :param green: True under eventlet.
    :param retryable: ``retryable(error)`` -> True when a delivery that
        raised ``error`` may succeed later (``conf.delivery_retries``
        attempts more, ``conf.delivery_retry_interval`` apart, doubling).
    :param name: prefix of the path's thread names.

    No thread starts before :meth:`start`; :meth:`stop` ends them all.
    """

    def __init__(self, conf, deliver, live_state, green,
                 retryable=lambda error: False, name='lifecycle'):
        self._conf = conf
        self._deliver = deliver
        self._retryable = retryable
        self._name = name
        self._ledger = ledger.EventLedger()
        self._operations = operations.DriverOperations(
            on_idle=self._operations_ended)
        self._policy = policy.StoppedPolicy(conf, self._operations,
                                            live_state)
        self._stop_waiters = stop_waiters.StopWaiters()
        self._executor = concurrency.make_executor(conf.dispatch_workers,
                                                   name + '-dispatch')
        self._dispatcher = dispatch.KeyedDispatcher(self._executor,
                                                    name + '-dispatch')
        self._holds = holds.HeldStops(self._dispatch, name + '-delayed')
        self._inbox = inbox.make_inbox(self._intake, name + '-inbox', green)
        self._reported = set()
        # STOPPED events handed to Nova, by why libvirt says they stopped;
        # failed deliveries tried again, by error; one lock for both.
        self._stop_reasons = collections.Counter()
        self._retries = collections.Counter()
        self._tallies_lock = threading.Lock()
        self._latency = histogram.Histogram()
        self._started = False
        self._stopped = False
        self._green = green
        # Events queued after stop() under eventlet, where the caller may
        # be libvirt's native thread: kept with a native lock only, counted
        # in status() and logged from there.
        self._late_lock = concurrency.native_threading().Lock()
        self._late_count = 0
        self._late_unlogged = []

    # The driver's side

    def start(self):
        if not self._started:
            self._started = True
            self._inbox.start()

    def queue(self, event):
        """Accept an instance event from any thread; never blocks or raises.

        Once the path has stopped the event is counted as cancelled by
        shutdown, with a log line naming the instance.
        """
        if not self._stopped:
            try:
                self._inbox.put(event)
                return
            except RuntimeError:
                pass  # Only a stopped inbox refuses.
        if not self._green:
            self._drop_at_shutdown(event, self._ledger.open())
            return
        # No logging and no green lock on a native thread.
        with self._late_lock:
            self._late_count += 1
            if len(self._late_unlogged) < MAX_LATE_LOGGED:
                self._late_unlogged.append(
                    (str(event), getattr(event, 'uuid', None)))

    def track(self, uuid, operation):
        """Context manager: a driver ``operation`` on ``uuid`` runs."""
        return self._operations.track(uuid, operation)

    def operation_explains(self, uuid):
        """True while a driver operation explains a STOPPED of ``uuid``.

        One runs on the instance, or one that stops domains ended less
        than ``stopped_event_delay`` ago (its STOPPED may come late).
        """
        return self._policy.explained(uuid)

    def stop_waiter(self, uuid):
        """Context manager: an Event set by each STOPPED of ``uuid``."""
        return self._stop_waiters.waiting_for(uuid)

    def stop(self, timeout=30):
        """Stop taking events and wind down every thread of the path.

        Events already accepted are delivered (when a listener is still
        registered) or cancelled; each held STOPPED is cancelled with one
        log line naming the instance: the next power-state sync at start-up
        reconciles it.
        """
        self._stopped = True
        if not self._inbox.stop(timeout):
            LOG.warning('%s-inbox did not stop within %ss', self._name,
                        timeout)
        self._holds.close()
        self._dispatcher.shutdown(wait=True)
        self._executor.shutdown(wait=True)

    # Observers' side

    def status(self):
        """A :class:`PathStatus` of this moment."""
        return PathStatus(
            counts=self._counts(),
            held=self._holds.held(),
            dispatch_queue=self._dispatcher.pending_count(),
            dispatching=self._dispatcher.busy_keys(),
            operations=self._operations.busy(),
            stop_waiters=self._stop_waiters.waiting(),
            stopped_by_reason=self._stopped_by_reason(),
            delivery_latency=self._latency.snapshot(),
            retrying=self._holds.held(retries=True),
            retries=self._retries_by_error(),
            threads=self.threads_alive())

    def _counts(self):
        counts = self._with_late(self._ledger.snapshot())
        with self._late_lock:
            unlogged, self._late_unlogged = self._late_unlogged, []
        for event, uuid in unlogged:
            self._log_dropped_at_shutdown(event, uuid)
        return counts

    def _with_late(self, counts):
        with self._late_lock:
            late = self._late_count
        if late:
            counts['received'] += late
            counts['cancelled'] += late
            reasons = counts['cancelled_by_reason']
            reasons[REASON_SHUTDOWN] = reasons.get(REASON_SHUTDOWN, 0) + late
        return counts

    def wait_for_counts(self, predicate, timeout=None):
        """Wait until ``predicate(status().counts)`` holds; True if it did.

        For observers that follow the path without polling (tests, the
        main job, benchmarks).
        """
        def holds(snapshot):
            return predicate(self._with_late(snapshot))

        if not (self._green and self._stopped):
            return self._ledger.wait_until(holds, timeout)
        # Late events come from native threads, which cannot wake a green
        # waiter: look again at short intervals.
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ledger.wait_until(holds, LATE_RECHECK):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True

    def _stopped_by_reason(self):
        with self._tallies_lock:
            return dict(self._stop_reasons)

    def _retries_by_error(self):
        with self._tallies_lock:
            return dict(self._retries)

    def threads_alive(self):
        """Names of the path's threads still running."""
        alive = []
        if self._inbox.is_alive():
            alive.append(self._name + '-inbox')
        if self._holds.is_alive():
            alive.append(self._name + '-delayed')
        # Native dispatch workers; a green pool's end with its shutdown.
        alive.extend(sorted(thread.name for thread in getattr(
            self._executor, '_threads', ()) if thread.is_alive()))
        return alive

    # Intake

    def _intake(self, event):
        entry = self._ledger.open()
        if not isinstance(event, virtevent.InstanceEvent):
            LOG.warning('Dropping %r: not an instance event', event)
            entry.fail(TypeError('not an instance event: %r' % (event,)))
            return
        if (isinstance(event, libvirt_events.DomainLifecycleEvent) and
                not self._readable(event, entry)):
            return
        try:
            self._stop_waiters.notify(event)
        except Exception:
            LOG.exception('Waking the waiters of instance %s failed',
                          event.uuid)
        self._holds.admit(event, entry, self._policy.hold_for)

    def _drop_at_shutdown(self, event, entry):
        self._log_dropped_at_shutdown(event, getattr(event, 'uuid', None))
        entry.cancel(REASON_SHUTDOWN)

    @staticmethod
    def _log_dropped_at_shutdown(event, uuid):
        LOG.info('Event %s for instance %s arrived during shutdown; '
                 'dropped.', event, uuid)

    def _log_once(self, key, level, msg, *args):
        if key not in self._reported:
            self._reported.add(key)
            LOG.log(level, msg, *args)

    def _readable(self, event, entry):
        """Report and end an event that cannot go on; True if it can."""
        if event.uuid is None:
            LOG.warning('Ignoring libvirt %s event: %s',
                        event.detail_name, event.error)
            entry.fail(BadLifecycleEvent(event.error))
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
            entry.cancel(REASON_NO_TRANSITION)
            return False
        if not event.is_known:
            self._log_once(
                ('detail', event.libvirt_event, event.libvirt_detail),
                logging.INFO,
                'libvirt event %s for instance %s has a detail this plugin '
                'does not know; handled as %s (reported once).',
                event.detail_name, event.uuid, event.get_name())
        return True

    def _operations_ended(self, uuid, name):
        delay = self._policy.after_operations()
        if delay is not None and self._holds.bring_forward(uuid, delay):
            LOG.debug('STOPPED event for instance %s held during %s; '
                      'rechecked in %ss.', uuid, name, delay)

    # Dispatch

    def _dispatch(self, event, entry):
        run = self._deliver_timed
        if holds.is_stopped(event):
            run = self._deliver_stopped
        try:
            # The latency is the first attempt's.
            future = self._dispatcher.submit(event.uuid, run, event,
                                             not entry.retries)
        except RuntimeError as exc:
            LOG.error('Cannot dispatch event %s for instance %s: %s',
                      event, event.uuid, exc)
            entry.fail(exc)
            return
        future.add_done_callback(functools.partial(self._settle, event,
                                                   entry))

    def _deliver_timed(self, event, observe=True):
        """Deliver, noting how long after libvirt's callback it started."""
        received_at = getattr(event, 'received_at', None)
        if observe and received_at is not None:
            self._latency.observe(time.monotonic() - received_at)
        return self._deliver(event)

    def _deliver_stopped(self, event, observe=True):
        """Deliver a STOPPED only if a look at the domain still agrees.

        :returns: what ``deliver`` returns, or the reason not to deliver.
        """
        reason = self._policy.recheck(event)
        if reason:
            return reason
        delivered = self._deliver_timed(event, observe)
        if delivered is True:
            why = libvirt_events.stop_reason(event)
            operation = self._policy.explaining_operation(event.uuid)
            if operation is None:
                LOG.info('Instance %s is off: %s; Nova was told.',
                         event.uuid, why)
            else:
                # QEMU reports the guest's answer to Nova's own ACPI
                # request as a shutdown of the guest's: the driver's
                # operation is the better reason.
                LOG.info('Instance %s is off: during Nova\'s %s (libvirt: '
                         '%s); Nova was told.', event.uuid, operation, why)
                why = 'during Nova\'s %s' % operation
            with self._tallies_lock:
                self._stop_reasons[why] += 1
        return delivered

    def _settle(self, event, entry, future):
        """End the entry of a dispatched event by its outcome."""
        if future.cancelled():
            LOG.info('Event %s for instance %s dropped by shutdown.',
                     event, event.uuid)
            self._holds.ended(event)
            entry.cancel(REASON_SHUTDOWN)
            return
        error = future.exception()
        if error is not None and self._try_again(event, entry, error):
            return
        self._holds.ended(event)
        if error is not None:
            if entry.retries:
                LOG.error('Handling event %s for instance %s failed after %d '
                          'more attempts: %s; the periodic power state sync '
                          'reconciles it.', event, event.uuid, entry.retries,
                          error, exc_info=error)
            else:
                LOG.error('Handling event %s for instance %s failed: %s',
                          event, event.uuid, error, exc_info=error)
            entry.fail(error)
        elif isinstance(future.result(), str):
            LOG.info('Event %s for instance %s not delivered: %s.',
                     event, event.uuid, future.result())
            entry.cancel(future.result())
        elif future.result():
            entry.deliver()
        elif holds.is_stopped(event):
            # The compute manager unregisters first when nova-compute
            # stops; a STOPPED must not vanish without a word.
            LOG.info('STOPPED event for instance %s dropped: no compute '
                     'manager listens; the power state sync at the next '
                     'start-up reconciles it.', event.uuid)
            entry.cancel(REASON_NO_LISTENER)
        else:
            LOG.debug('No listener for event %s of instance %s; dropped.',
                      event, event.uuid)
            entry.cancel(REASON_NO_LISTENER)

    def _try_again(self, event, entry, error):
        """Hold a failed event for another attempt if the error may pass.

        :returns: True when the entry stays open (held, or ended here as
            superseded or by shutdown); False to end it as failed.
        """
        attempts = entry.retries
        if (self._stopped or not self._retryable(error) or
                attempts >= self._conf.delivery_retries):
            return False
        delay = self._conf.delivery_retry_interval * 2 ** attempts
        not_held = self._holds.hold_again(event, entry, delay)
        if not_held is not None:
            LOG.warning('Handling event %s for instance %s failed: %s; not '
                        'tried again: %s.', event, event.uuid, error,
                        not_held)
            entry.cancel(not_held)
            return True
        entry.retries = attempts + 1
        with self._tallies_lock:
            self._retries[type(error).__name__] += 1
        LOG.warning('Handling event %s for instance %s failed: %s; trying '
                    'again in %.1fs (attempt %d of %d).', event, event.uuid,
                    error, delay, attempts + 2,
                    self._conf.delivery_retries + 1)
        return True
