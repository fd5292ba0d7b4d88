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

"""The hypervisor side of the main job on Nova's fake libvirt.

Nova's fake libvirt (``nova.tests.fixtures.libvirt``) keeps domains in
memory and emits lifecycle events synchronously as a domain's state
changes. On top of the functional tests' :class:`RealisticDomainEvents`
(libvirt's details for destroy and shutdown) this module adds what the
scenarios need:

* :class:`EventTimeline`: when each lifecycle event was emitted, per
  domain: the scenarios' "hypervisor change" times;
* :class:`PauseEvents`: SUSPENDED_PAUSED and RESUMED_UNPAUSED on suspend
  and resume, as libvirt sends them (the fake sends none);
* :class:`FakeGuests`: guests that honour the ACPI power button after
  :data:`ACPI_DELAY` seconds (a guest takes a moment to power off) or
  ignore it;
* :class:`FakeHypervisor`: what the scenarios ask of the hypervisor
  (``env.hv``), including a libvirtd outage: the connection closes,
  connecting fails for :data:`OUTAGE` seconds and a guest powers off
  meanwhile, without events, as they are lost while libvirtd is down.
"""

import functools
import heapq
import itertools
import time

import fixtures
from nova.tests.fixtures import libvirt as fakelibvirt

from mainjob import scenarios
from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests.functional import base as func_base

# Seconds an ACPI-honouring fake guest takes to power off.
ACPI_DELAY = 0.5
# Seconds libvirtd is unreachable in the restart scenario, and when within
# that time the guest powers off.
OUTAGE = 1.5
POWER_OFF_INTO_OUTAGE = 0.5

GUEST_THREAD = concurrency.THREAD_PREFIX + 'mainjob-fake-guests'

RUNNING = fakelibvirt.VIR_DOMAIN_RUNNING
SHUTOFF = fakelibvirt.VIR_DOMAIN_SHUTOFF

# State asked for -> lifecycle events that bring a domain into it.
STATE_EVENTS = {
    'running': (
        libvirt_events.DOMAIN_EVENT_STARTED,
        libvirt_events.DOMAIN_EVENT_RESUMED),
    'shutoff': (libvirt_events.DOMAIN_EVENT_STOPPED,),
    'paused': (libvirt_events.DOMAIN_EVENT_SUSPENDED,),
}
SUSPENDED_PAUSED = 0
RESUMED_UNPAUSED = 0
# libvirt's VIR_CONNECT_CLOSE_REASON_EOF (the fake does not define it).
CLOSE_REASON_EOF = 1


def _patch(fixture, name, new):
    fixture.useFixture(fixtures.MonkeyPatch(
        'nova.tests.fixtures.libvirt.' + name, new))


class EventTimeline(fixtures.Fixture):
    """Records (time, event, detail) of every lifecycle event, per UUID.

    Wraps whatever ``Connection._emit_lifecycle`` is when set up, so it
    goes after :class:`RealisticDomainEvents`. May be called from any
    thread: a native lock guards the records.
    """

    def _setUp(self):
        self._lock = concurrency.native_threading().Lock()
        self._events = []
        emit = fakelibvirt.Connection._emit_lifecycle
        timeline = self

        @functools.wraps(emit)
        def recording(conn, dom, event, detail):
            with timeline._lock:
                timeline._events.append(
                    (time.monotonic(), dom.UUIDString(), event, detail))
            return emit(conn, dom, event, detail)

        _patch(self, 'Connection._emit_lifecycle', recording)

    def first(self, uuid, event_types, after):
        """Time of the first of these events at or after ``after``."""
        with self._lock:
            for when, seen, event, _ in self._events:
                if seen == uuid and event in event_types and when >= after:
                    return when
        return None

    def names(self, uuid):
        with self._lock:
            return [libvirt_events.event_name(event, detail)
                    for _, seen, event, detail in self._events
                    if seen == uuid]


class PauseEvents(fixtures.Fixture):
    """The fake's suspend and resume send libvirt's events."""

    def _setUp(self):
        domain = fakelibvirt.Domain
        _patch(self, 'Domain.suspend', self._wrap(
            domain.suspend, libvirt_events.DOMAIN_EVENT_SUSPENDED,
            SUSPENDED_PAUSED))
        _patch(self, 'Domain.resume', self._wrap(
            domain.resume, libvirt_events.DOMAIN_EVENT_RESUMED,
            RESUMED_UNPAUSED))

    @staticmethod
    def _wrap(method, event, detail):
        @functools.wraps(method)
        def wrapper(dom, *args, **kwargs):
            result = method(dom, *args, **kwargs)
            dom._connection._emit_lifecycle(dom, event, detail)
            return result
        return wrapper


class FakeGuests(fixtures.Fixture):
    """Guests that honour the ACPI power button after a delay, or not.

    A domain's behaviour is registered by UUID (:meth:`register`); an
    unregistered one honours the button. Delayed power-offs run on one
    native thread (:data:`GUEST_THREAD`), as libvirt's events come from a
    native thread; it is stopped in cleanup.
    """

    def _setUp(self):
        native = concurrency.native_threading()
        self._guests = {}
        self.presses = {}
        self._heap = []
        self._seq = itertools.count()
        self._cond = native.Condition()
        self._stopping = False
        self.errors = []
        shutdown = fakelibvirt.Domain.shutdown
        guests = self

        @functools.wraps(shutdown)
        def acpi_power_button(dom):
            guests._press(dom, functools.partial(shutdown, dom))

        _patch(self, 'Domain.shutdown', acpi_power_button)
        self._thread = native.Thread(target=self._run, name=GUEST_THREAD,
                                     daemon=True)
        self._thread.start()
        self.addCleanup(self._stop)

    def register(self, uuid, guest):
        self._guests[uuid] = guest

    def _press(self, dom, power_off):
        uuid = dom.UUIDString()
        self.presses[uuid] = self.presses.get(uuid, 0) + 1
        guest = self._guests.get(uuid, scenarios.HONOURS_ACPI)
        if guest.acpi != 'honour':
            return

        def off():
            if dom._state == RUNNING:
                power_off()

        self.call_later(ACPI_DELAY, off)

    def call_later(self, delay, fn):
        with self._cond:
            heapq.heappush(self._heap,
                           (time.monotonic() + delay, next(self._seq), fn))
            self._cond.notify()

    def _run(self):
        while True:
            with self._cond:
                while not self._stopping:
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    timeout = self._heap[0][0] - now if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, _, fn = heapq.heappop(self._heap)
            try:
                fn()
            except Exception as exc:
                # Reported by the deployment; this thread never logs.
                self.errors.append(exc)

    def _stop(self):
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(10)
        if self._thread.is_alive():
            raise AssertionError('%s did not stop' % GUEST_THREAD)


class FakeHypervisor:
    """``env.hv`` on Nova's fake libvirt."""

    kind = 'fake'
    # Seconds the API may take to show a power-off during a libvirtd
    # outage. The plugin reconnects (retrying after 1, 2, 4... s) and
    # resyncs; upstream only notices at its next power-state sync, the
    # periodic one (sync_power_state_interval, 600 s by default), so this
    # wait fails it.
    restart_wait = 12.0
    # Fake servers cost nothing: they stay until the deployment ends.
    delete_servers = False

    def __init__(self, timeline, guests):
        self.timeline = timeline
        self.guests = guests
        self.connection = None
        self.host = None
        self._up = True

    def attach(self, host, connection):
        """Serve ``host``'s connections, so that libvirtd can go away."""
        self.host = host
        self.connection = connection
        host._connect = self._connect

    def _connect(self, uri, read_only):
        if not self._up:
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError,
                'Failed to connect socket to '
                '\'/var/run/libvirt/libvirt-sock\': Connection refused',
                error_code=fakelibvirt.VIR_ERR_SYSTEM_ERROR,
                error_domain=fakelibvirt.VIR_FROM_REMOTE)
        return self.connection

    def image_for(self, guest):
        """The image a server with this guest boots (None: the default)."""
        return None

    def register(self, server, guest):
        self.guests.register(server['id'], guest)

    def domain(self, server):
        return self.connection.lookupByUUIDString(server['id'])

    def change_time(self, server, state, after):
        when = self.timeline.first(server['id'], STATE_EVENTS[state], after)
        if when is None:
            raise scenarios.ScenarioFailed(
                'no %s event for the domain; events: %s'
                % (state, ', '.join(self.timeline.names(server['id']))))
        return when

    def assert_running(self, server):
        if self.domain(server)._state != RUNNING:
            raise scenarios.ScenarioFailed(
                'domain not running (state %s)' % self.domain(server)._state)

    def guest_power_off(self, server):
        """The guest powers off by itself: SHUTDOWN_GUEST, STOPPED_SHUTDOWN.

        Returns when the domain's state changed.
        """
        dom = self.domain(server)
        if dom._state != RUNNING:
            raise scenarios.ScenarioFailed('domain not running')
        changed = time.monotonic()
        self.connection._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        dom._state = SHUTOFF
        self.connection._mark_not_running(dom)
        return changed

    def _power_off_silently(self, dom):
        func_base.power_off_silently(self.connection, dom)

    def restart_libvirtd_while_guest_powers_off(self, server):
        """libvirtd goes away, the guest powers off, libvirtd comes back.

        The connection's close callback fires (libvirt's keepalive or EOF),
        connecting fails for :data:`OUTAGE` seconds and the guest powers
        off :data:`POWER_OFF_INTO_OUTAGE` seconds into it; its events are
        lost. Returns when the domain's state changed.
        """
        dom = self.domain(server)
        self._up = False
        try:
            self.host._close_callback(
                self.connection, CLOSE_REASON_EOF, None)
            time.sleep(POWER_OFF_INTO_OUTAGE)
            changed = time.monotonic()
            self._power_off_silently(dom)
            time.sleep(OUTAGE - POWER_OFF_INTO_OUTAGE)
        finally:
            self._up = True
        return changed

    def interference(self, since):
        """Nothing but the main job touches the fake."""
        return None

    def wait_ready(self, server):
        """A fake guest is ready as soon as its domain runs."""

    def cleanup(self):
        """Problems left by the fake guests (nothing outlives them)."""
        if self.guests.errors:
            return ['fake guest actions failed: %r' % self.guests.errors]
        return []
