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

"""Fixtures for the shutdown tests: guests, libvirt's loop, held calls.

Nova's fake libvirt honours an ACPI shutdown at once, calls the lifecycle
callback on whatever thread changed the domain, and fails every live
migration. These fixtures give the shutdown tests what a host has:

* :class:`AcpiGuests`: guests that take their time to honour an ACPI
  power-button press, or ignore it until the domain is destroyed;
* :class:`EventsOnLibvirtLoop`: lifecycle callbacks run on the driver's
  libvirt event-loop thread, from within ``virEventRunDefaultImpl``, as
  libvirt runs them; once a driver has stopped its loop, its connection
  delivers nothing more;
* :class:`LiveMigrationOnFake`: ``migrateToURI3`` moves the domain to the
  destination's fake connection with libvirt's migration events, and can
  be held in flight;
* :class:`HeldCall`: a method that waits until the test lets it run.
"""

import collections
import math
import threading
import time
from urllib import parse
import weakref

import fixtures
from nova.tests.fixtures import libvirt as fakelibvirt

from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import loop as libvirt_loop
from nova_lifecycle.virt import host as lc_host
from nova_lifecycle.virt import shutdown

# Seconds a held call or a fixture thread may wait before giving up.
HOLD_TIMEOUT = 60
# libvirt's numbers for the migration details.
STARTED_MIGRATED = 1
RESUMED_MIGRATED = 1
STOPPED_MIGRATED = 3

RUNNING = fakelibvirt.VIR_DOMAIN_RUNNING
SHUTOFF = fakelibvirt.VIR_DOMAIN_SHUTOFF


def _patch(fixture, name, new):
    fixture.useFixture(fixtures.MonkeyPatch(
        'nova.tests.fixtures.libvirt.' + name, new))


def mark_running(conn, dom, detail):
    """The fake domain runs; libvirt says STARTED with ``detail``."""
    dom._state = RUNNING
    dom._id = conn._id_counter
    conn._running_vms[conn._id_counter] = dom
    conn._id_counter += 1
    conn._emit_lifecycle(dom, libvirt_events.DOMAIN_EVENT_STARTED, detail)


def mark_stopped(conn, dom, detail):
    """The fake domain is off; libvirt says STOPPED with ``detail``."""
    dom._state = SHUTOFF
    dom._lifecycle_stopped_detail = detail
    try:
        # The fake's own STOPPED; RealisticDomainEvents sets the detail.
        conn._mark_not_running(dom)
    finally:
        del dom._lifecycle_stopped_detail


class HeldCall(fixtures.Fixture):
    """Calls of ``target.<name>`` wait until the test sets ``proceed``.

    ``started`` is set when a call arrives; ``waiting()`` counts the calls
    waiting right now, so a test can see that the operation really is
    blocked before letting it go. The call then runs ``then`` (by default
    the method as it was).
    """

    def __init__(self, target, name, then=None, timeout=HOLD_TIMEOUT):
        super().__init__()
        self._target = target
        self._name = name
        self._then = then
        self._timeout = timeout
        self.started = threading.Event()
        self.proceed = threading.Event()
        self._lock = threading.Lock()
        self._waiting = 0

    def _setUp(self):
        original = getattr(self._target, self._name)
        then = self._then or original

        def held(*args, **kwargs):
            with self._lock:
                self._waiting += 1
            self.started.set()
            try:
                self.proceed.wait(self._timeout)
            finally:
                with self._lock:
                    self._waiting -= 1
            return then(*args, **kwargs)

        own = self._name in vars(self._target)
        setattr(self._target, self._name, held)
        if own:
            self.addCleanup(setattr, self._target, self._name, original)
        else:
            self.addCleanup(delattr, self._target, self._name)
        # A test that fails early must not leave an operation hanging.
        self.addCleanup(self.proceed.set)

    def waiting(self):
        with self._lock:
            return self._waiting


class _Guest:
    """One guest's answer to ACPI power-button presses."""

    def __init__(self, after, ignore):
        self.after = after
        self.ignore = ignore
        self.presses = 0
        self.released = threading.Event()
        self.off = False


class AcpiGuests(fixtures.Fixture):
    """Guests that honour ACPI late, when told to, or never.

    A guest not configured here behaves as Nova's fake (off at once).
    ``slow(uuid, after)`` powers off ``after`` seconds after the first
    press; when ``held``, not before ``release(uuid)``, and then a whole
    number of the power-off's re-read intervals later, so that with
    ``after`` half an interval the guest goes off half-way between two
    re-reads of the domain, and what ends the wait is its event.
    ``ignoring(uuid)`` never reacts (Nova destroys the domain at the end
    of its timeout). Powering off sends what libvirt sends for a guest's
    ACPI shutdown: SHUTDOWN_GUEST, then STOPPED_SHUTDOWN.
    """

    def _setUp(self):
        self._lock = threading.Condition()
        self._guests = {}
        self._threads = []
        shutdown = fakelibvirt.Domain.shutdown

        def pressed(dom):
            guest = self._guests.get(dom.UUIDString())
            if guest is None:
                return shutdown(dom)
            with self._lock:
                guest.presses += 1
                first = guest.presses == 1
                self._lock.notify_all()
            if first and not guest.ignore:
                self._power_off_later(dom, guest)

        _patch(self, 'Domain.shutdown', pressed)
        self.addCleanup(self._join)

    def slow(self, uuid, after, held=False):
        guest = _Guest(after, ignore=False)
        if not held:
            guest.released.set()
        self._guests[uuid] = guest
        return guest

    def ignoring(self, uuid):
        guest = _Guest(None, ignore=True)
        self._guests[uuid] = guest
        return guest

    def release(self, uuid):
        self._guests[uuid].released.set()

    def presses(self, uuid):
        with self._lock:
            return self._guests[uuid].presses

    def wait_for_press(self, uuid, count=1, timeout=HOLD_TIMEOUT):
        """Wait until the guest saw ``count`` presses; True if it did."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self._guests[uuid].presses >= count, timeout)

    def _power_off_later(self, dom, guest):
        thread = threading.Thread(
            target=self._power_off, args=(dom, guest, time.monotonic()),
            name='test-guest-%s' % dom.UUIDString()[:8], daemon=True)
        self._threads.append(thread)
        thread.start()

    def _power_off(self, dom, guest, pressed_at):
        if not guest.released.wait(HOLD_TIMEOUT):
            return
        due = pressed_at + guest.after
        late = time.monotonic() - due
        if late > 0:
            due += math.ceil(late / shutdown.RECHECK_INTERVAL) * \
                shutdown.RECHECK_INTERVAL
        left = due - time.monotonic()
        if left > 0:
            time.sleep(left)  # the guest's own shutdown takes this long
        if dom._state != RUNNING:
            return
        conn = dom._connection
        conn._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        mark_stopped(conn, dom, libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        guest.off = True

    def _join(self):
        for guest in self._guests.values():
            guest.released.set()
        for thread in self._threads:
            thread.join(HOLD_TIMEOUT)


class EventsOnLibvirtLoop(fixtures.Fixture):
    """Lifecycle callbacks run on the driver's libvirt event-loop thread.

    ``attach(connection)`` wraps the lifecycle callback a driver registered
    on a fake connection: a domain change queues the callback, and the
    driver's loop thread runs it from ``virEventRunDefaultImpl``, in order.
    Once that loop has stopped, the connection's callbacks stay queued
    (``undelivered``), as events are lost with a closed connection.

    Every driver's loop thread has the same name: the fixture notes which
    thread each event handler's ``start`` began (set it up before the
    computes start).
    """

    # How long one loop iteration waits for an event.
    ITERATION = 0.1

    def _setUp(self):
        native = concurrency.native_threading()
        self._cond = native.Condition()
        self._queued = collections.deque()
        # LifecycleEventHandler -> its libvirt loop thread.
        self._loops = weakref.WeakKeyDictionary()
        _patch(self, 'virEventRunDefaultImpl', self._run_once)
        start = lc_host.LifecycleEventHandler.start

        def start_and_note_loop(handler, *args, **kwargs):
            before = set(native.enumerate())
            start(handler, *args, **kwargs)
            started = [thread for thread in native.enumerate()
                       if thread not in before and
                       thread.name == libvirt_loop.THREAD_NAME]
            if started:
                with self._cond:
                    self._loops[handler] = started[0]
                    self._cond.notify_all()

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.host.LifecycleEventHandler.start',
            start_and_note_loop))

    def attach(self, connection):
        entry = connection._event_callbacks[
            fakelibvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE]
        callback, host = entry

        def queue(conn, dom, event, detail, opaque):
            with self._cond:
                self._queued.append(
                    (host, callback, (conn, dom, event, detail, opaque)))
                self._cond.notify_all()

        entry[0] = queue

    def undelivered(self, host=None):
        with self._cond:
            return [item for item in self._queued
                    if host is None or item[0] is host]

    def _run_once(self):
        me = concurrency.native_threading().current_thread()
        with self._cond:
            self._cond.wait_for(lambda: self._mine(me), self.ITERATION)
            # Run under the lock so that two drivers' loops cannot reorder
            # one connection's events; the callbacks never block.
            for item in [i for i in self._queued if self._owns(i, me)]:
                self._queued.remove(item)
                item[1](*item[2])

    def _mine(self, thread):
        return any(self._owns(item, thread) for item in self._queued)

    def _owns(self, item, thread):
        # item[0] is the Host; its _event_handler the driver's
        # event_handler.
        return self._loops.get(item[0]._event_handler) is thread


class LiveMigrationOnFake(fixtures.Fixture):
    """``migrateToURI3`` on Nova's fake, with libvirt's events.

    The domain is defined on the destination's connection (found by the
    URI's host name in ``connections``) and runs there (STARTED_MIGRATED,
    RESUMED_MIGRATED); the source's job completes (SUSPENDED_MIGRATED,
    which Nova reads as MIGRATION_COMPLETED) and its domain stops
    (STOPPED_MIGRATED). ``hold()`` keeps the next migrations in flight
    until ``proceed`` is set.
    """

    def __init__(self, connections):
        super().__init__()
        self._connections = connections
        self.started = threading.Event()
        self.proceed = threading.Event()
        self.proceed.set()
        self.migrated = []

    def _setUp(self):
        _patch(self, 'Domain.migrateToURI3', self._migrate)
        self.addCleanup(self.proceed.set)

    def hold(self):
        self.proceed.clear()

    def _migrate(self, dom, dconnuri, params, flags):
        self.started.set()
        if not self.proceed.wait(HOLD_TIMEOUT):
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError, 'test: migration held too long',
                error_code=fakelibvirt.VIR_ERR_OPERATION_FAILED)
        dest = self._connections[parse.urlparse(dconnuri).hostname]
        copy = dest.defineXML(params['destination_xml'])
        mark_running(dest, copy, STARTED_MIGRATED)
        dest._emit_lifecycle(
            copy, libvirt_events.DOMAIN_EVENT_RESUMED, RESUMED_MIGRATED)
        source = dom._connection
        dom.complete_job()
        source._emit_lifecycle(dom, libvirt_events.DOMAIN_EVENT_SUSPENDED,
                               libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED)
        mark_stopped(source, dom, STOPPED_MIGRATED)
        self.migrated.append(dom.UUIDString())
