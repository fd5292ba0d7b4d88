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

"""libvirt domain lifecycle callbacks -> ``nova.virt.event`` objects.

The translation keeps Nova's transition mapping and adds what upstream
drops: libvirt's own event and detail numbers, so later decisions can tell
a guest that shut itself down from one that was destroyed or crashed.

:func:`translate` runs on libvirt's native event-loop thread. It may call
libvirt but must not log (under eventlet that thread must not touch green
primitives), so anything odd is recorded on the event and reported by
whoever picks it up.
"""

import time

from nova.virt import event as virtevent
from nova.virt.libvirt import guest as libvirt_guest
from nova.virt.libvirt import migration as libvirt_migration


def libvirt_module():
    """The libvirt module Nova's libvirt host uses (real or Nova's fake)."""
    from nova.virt.libvirt import host
    return host.libvirt


# libvirt event type -> (name, {detail: name}); numbers from libvirt's API.
_EVENT_NAMES = {
    0: ('DEFINED', {0: 'ADDED', 1: 'UPDATED', 2: 'RENAMED',
                    3: 'FROM_SNAPSHOT'}),
    1: ('UNDEFINED', {0: 'REMOVED', 1: 'RENAMED'}),
    2: ('STARTED', {0: 'BOOTED', 1: 'MIGRATED', 2: 'RESTORED',
                    3: 'FROM_SNAPSHOT', 4: 'WAKEUP', 5: 'RECREATED'}),
    3: ('SUSPENDED', {0: 'PAUSED', 1: 'MIGRATED', 2: 'IOERROR',
                      3: 'WATCHDOG', 4: 'RESTORED', 5: 'FROM_SNAPSHOT',
                      6: 'API_ERROR', 7: 'POSTCOPY', 8: 'POSTCOPY_FAILED'}),
    4: ('RESUMED', {0: 'UNPAUSED', 1: 'MIGRATED', 2: 'FROM_SNAPSHOT',
                    3: 'POSTCOPY', 4: 'POSTCOPY_FAILED'}),
    5: ('STOPPED', {0: 'SHUTDOWN', 1: 'DESTROYED', 2: 'CRASHED',
                    3: 'MIGRATED', 4: 'SAVED', 5: 'FAILED',
                    6: 'FROM_SNAPSHOT', 7: 'RECREATED'}),
    6: ('SHUTDOWN', {0: 'FINISHED', 1: 'GUEST', 2: 'HOST'}),
    7: ('PMSUSPENDED', {0: 'MEMORY', 1: 'DISK'}),
    8: ('CRASHED', {0: 'PANICKED', 1: 'CRASHLOADED'}),
}

# Most SHUTDOWN details kept while waiting for their domain's STOPPED.
MAX_SHUTDOWN_NOTES = 10000

# Event types Nova has no transition for and that need no report.
_SILENT_TYPES = frozenset({0, 1, 7, 8})

# libvirt's own names (virDomainEventType and its detail enums); Nova's
# transitions are ``nova.virt.event.EVENT_LIFECYCLE_*``.
DOMAIN_EVENT_STARTED = 2
DOMAIN_EVENT_SUSPENDED = 3
DOMAIN_EVENT_RESUMED = 4
DOMAIN_EVENT_STOPPED = 5
DOMAIN_EVENT_SHUTDOWN = 6
DOMAIN_EVENT_SUSPENDED_MIGRATED = 1
DOMAIN_EVENT_SUSPENDED_POSTCOPY = 7
DOMAIN_EVENT_STOPPED_SHUTDOWN = 0
DOMAIN_EVENT_STOPPED_DESTROYED = 1
DOMAIN_EVENT_STOPPED_CRASHED = 2
DOMAIN_EVENT_STOPPED_FAILED = 5
DOMAIN_EVENT_SHUTDOWN_FINISHED = 0
DOMAIN_EVENT_SHUTDOWN_GUEST = 1
DOMAIN_EVENT_SHUTDOWN_HOST = 2


def event_name(event_type, detail):
    """'STOPPED_SHUTDOWN' style name; unknown numbers are shown as such."""
    name, details = _EVENT_NAMES.get(event_type,
                                     ('UNKNOWN(%s)' % (event_type,), {}))
    return '%s_%s' % (name, details.get(detail, 'UNKNOWN(%s)' % (detail,)))


def is_known(event_type, detail):
    """True when libvirt's numbers are ones this module has names for."""
    return detail in _EVENT_NAMES.get(event_type, ('', {}))[1]


class DomainLifecycleEvent(virtevent.LifecycleEvent):
    """Nova's LifecycleEvent plus libvirt's event and detail.

    ``transition`` is Nova's (None when libvirt sent an event type Nova has
    no transition for). ``received_at`` is ``time.monotonic()`` when the
    libvirt callback ran. ``error`` is set when the domain could not be
    read, e.g. its UUID; ``uuid`` is then None.
    """

    def __init__(self, uuid, transition, libvirt_event, libvirt_detail,
                 error=None, timestamp=None, received_at=None):
        super().__init__(uuid, transition, timestamp)
        self.libvirt_event = libvirt_event
        self.libvirt_detail = libvirt_detail
        # For a STOPPED: the detail of the SHUTDOWN event libvirt sent just
        # before it (who asked for the shutdown), when there was one.
        self.shutdown_detail = None
        self.error = error
        self.received_at = (time.monotonic() if received_at is None
                            else received_at)

    @property
    def detail_name(self):
        return event_name(self.libvirt_event, self.libvirt_detail)

    @property
    def is_known(self):
        return is_known(self.libvirt_event, self.libvirt_detail)

    def __repr__(self):
        name = ('no transition' if self.transition is None
                else self.get_name())
        return '<%s: %s, %s => %s>' % (
            type(self).__name__, self.timestamp, self.uuid, name)

    def __str__(self):
        return '%s (%s)' % (repr(self), self.detail_name)


# Why a domain stopped, by libvirt's STOPPED detail, for operators.
_STOP_REASONS = {
    DOMAIN_EVENT_STOPPED_SHUTDOWN: 'shut down',
    DOMAIN_EVENT_STOPPED_DESTROYED: 'destroyed (powered off at the host)',
    DOMAIN_EVENT_STOPPED_CRASHED: 'guest crashed',
    3: 'migrated away',
    4: 'saved to a file',
    DOMAIN_EVENT_STOPPED_FAILED: 'QEMU process failed',
    6: 'restored from a snapshot',
    7: 'recreated',
}
_SHUTDOWN_BY = {
    DOMAIN_EVENT_SHUTDOWN_GUEST: 'guest shut down by itself',
    DOMAIN_EVENT_SHUTDOWN_HOST: 'shut down at the host\'s request',
}


def stop_reason(event):
    """Why libvirt says the domain of a STOPPED event stopped, in words.

    From libvirt's STOPPED detail and, for a shutdown, who asked for it
    (the SHUTDOWN detail the translator put on the event).
    """
    detail = getattr(event, 'libvirt_detail', None)
    if detail is None:
        return 'not said (no libvirt detail)'
    if detail == DOMAIN_EVENT_STOPPED_SHUTDOWN:
        by = _SHUTDOWN_BY.get(getattr(event, 'shutdown_detail', None))
        if by is not None:
            return by
    return _STOP_REASONS.get(detail, 'libvirt detail %s' % (detail,))


def _migration_transition(dom):
    """Completed or failed migration, as libvirt's job says.

    SUSPENDED_MIGRATED is also sent when a live migration fails.
    """
    libvirt = libvirt_module()
    guest = libvirt_guest.Guest(dom)
    info = guest.get_job_info()
    if info.type == libvirt.VIR_DOMAIN_JOB_NONE:
        info.type = libvirt_migration.find_job_type(
            guest, instance=None, logging_ok=False)
    if info.type == libvirt.VIR_DOMAIN_JOB_COMPLETED:
        return virtevent.EVENT_LIFECYCLE_MIGRATION_COMPLETED
    return virtevent.EVENT_LIFECYCLE_PAUSED


def transition_for(dom, event_type, detail):
    """Nova's transition for a libvirt event, as upstream Nova maps it."""
    if event_type == DOMAIN_EVENT_STOPPED:
        return virtevent.EVENT_LIFECYCLE_STOPPED
    if event_type == DOMAIN_EVENT_STARTED:
        return virtevent.EVENT_LIFECYCLE_STARTED
    if event_type == DOMAIN_EVENT_RESUMED:
        return virtevent.EVENT_LIFECYCLE_RESUMED
    if event_type == DOMAIN_EVENT_SUSPENDED:
        if detail == DOMAIN_EVENT_SUSPENDED_POSTCOPY:
            return virtevent.EVENT_LIFECYCLE_POSTCOPY_STARTED
        if detail == DOMAIN_EVENT_SUSPENDED_MIGRATED:
            return _migration_transition(dom)
        return virtevent.EVENT_LIFECYCLE_PAUSED
    return None


class EventTranslator:
    """Turns libvirt's lifecycle callbacks into events, on libvirt's thread.

    libvirt sends SHUTDOWN (who asked the guest to shut down: the guest
    itself, the host, or not said) just before the STOPPED of a shutdown.
    The translator keeps that detail per domain and puts it on the
    STOPPED as ``shutdown_detail``, so the event path sees one kind of
    item. Only libvirt's loop thread calls :meth:`translate`; the notes
    of domains whose STOPPED never comes are bounded by ``max_notes``.
    """

    def __init__(self, max_notes=MAX_SHUTDOWN_NOTES):
        self._notes = {}
        self._max_notes = max_notes

    def translate(self, dom, event_type, detail):
        """The event for one libvirt lifecycle callback, or None.

        None for SHUTDOWN (kept for the STOPPED that follows) and for the
        event types Nova does not act on (DEFINED, UNDEFINED, PMSUSPENDED,
        CRASHED: a stop that follows them comes as its own STOPPED).
        Never raises: a failure is recorded on the event.
        """
        if event_type == DOMAIN_EVENT_SHUTDOWN:
            self._note_shutdown(dom, detail)
            return None
        event = translate(dom, event_type, detail)
        if (event is not None and event.uuid is not None and
                event.transition is not None):
            # An event Nova has no transition for is dropped further on;
            # the note waits for the next one that counts.
            event.shutdown_detail = self._notes.pop(event.uuid, None)
        return event

    def _note_shutdown(self, dom, detail):
        try:
            uuid = dom.UUIDString()
        except Exception:
            return  # Only an annotation: the STOPPED still comes.
        self._notes.pop(uuid, None)
        self._notes[uuid] = detail
        if len(self._notes) > self._max_notes:
            del self._notes[next(iter(self._notes))]


def translate(dom, event_type, detail):
    """The event for one libvirt lifecycle callback, without its SHUTDOWN.

    As :meth:`EventTranslator.translate`, for a single callback: None for
    SHUTDOWN and the event types Nova does not act on.
    """
    received_at = time.monotonic()
    if event_type in _SILENT_TYPES or event_type == DOMAIN_EVENT_SHUTDOWN:
        return None
    try:
        uuid = dom.UUIDString()
    except Exception as exc:
        return DomainLifecycleEvent(None, None, event_type, detail,
                                    error='cannot read domain UUID: %s' % exc,
                                    received_at=received_at)
    try:
        transition = transition_for(dom, event_type, detail)
    except Exception as exc:
        # The migration job could not be read: report the guest as paused,
        # which is what Nova does for a failed migration.
        return DomainLifecycleEvent(
            uuid, virtevent.EVENT_LIFECYCLE_PAUSED, event_type, detail,
            error='cannot read migration job: %s' % exc,
            received_at=received_at)
    return DomainLifecycleEvent(uuid, transition, event_type, detail,
                                received_at=received_at)
