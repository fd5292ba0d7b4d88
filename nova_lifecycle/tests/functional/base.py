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

"""Nova's in-process deployment with the plugin as its compute driver.

API, conductor, scheduler, the placement fixture and one nova-compute run
in the test process, as in Nova's own libvirt functional tests; the compute
service loads ``nova_lifecycle.LibvirtLifecycleDriver`` on Nova's fake
libvirt. What differs from Nova's ``ServersTestBase``:

* The compute's libvirt connection goes through Nova's real
  ``Host.get_connection`` (only the final ``_connect`` returns the fake
  connection). Nova's base replaces ``get_connection`` with a lambda, so
  the lifecycle callback would never be registered and a lost connection
  could never come back with a connection event.
* :class:`RealisticDomainEvents` makes the fake connection send libvirt's
  details: the fake sends STOPPED_SHUTDOWN for a destroy and no SHUTDOWN
  event before a shutdown.
* :class:`ComputeApiCalls` records, without replacing them, the compute
  API's ``stop`` and ``force_stop`` calls, and who made them.
* The fake connection gets ``getAllDomainStats`` (:class:`BulkDomainStats`)
  so the periodic sync takes the plugin's bulk path.
* After each test the compute service is stopped, the plugin's ledger must
  balance and none of the plugin's threads may be left.
"""

import contextlib
import functools
import os
import sys
import threading
import time
import types

import fixtures
from nova.compute import api as compute_api
from nova import context as nova_context
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.libvirt import base as libvirt_base
from nova.virt.libvirt import host as nova_host
from oslo_db.sqlalchemy import enginefacade

from nova_lifecycle import concurrency
from nova_lifecycle import conf  # noqa: F401 (registers [lifecycle])
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests import fixtures as lc_fixtures

# Nova's own method, taken before any test mocks it on the class.
_REAL_GET_CONNECTION = nova_host.Host.get_connection

DRIVER = 'nova_lifecycle.LibvirtLifecycleDriver'

# Seconds a functional test may run before it counts as hanging.
TEST_TIMEOUT = 150
# Seconds a wait for a state reached through the services may take.
WAIT = 20
# Seconds the compute service may take to stop the plugin's threads
# (libvirt's fake event loop wakes once a second).
STOP_WAIT = 30

# The plugin's timings in these tests: a STOPPED that nothing explains is
# handed on after GRACE; DELAY is long enough that a test relying on it
# would time out instead.
GRACE = 0.2
DELAY = 60.0

# libvirt's numbers (nova's fake libvirt has the states, not the details).
RUNNING = fakelibvirt.VIR_DOMAIN_RUNNING
SHUTOFF = fakelibvirt.VIR_DOMAIN_SHUTOFF
STOPPED_REASONS = ('superseded by ', 'domain is ')


def api_paste_config():
    """The api-paste.ini the nova wheel installs under its prefix."""
    for prefix in (sys.prefix, sys.base_prefix):
        path = os.path.join(prefix, 'etc', 'nova', 'api-paste.ini')
        if os.path.exists(path):
            return path
    return None


def wait_until(predicate, timeout=WAIT, interval=0.05):
    """Poll ``predicate`` until it is true; its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def power_off_silently(connection, dom):
    """Nova's fake libvirt: ``dom`` is off, and no event says so."""
    dom._state = SHUTOFF
    dom._id = -1
    running = connection._running_vms
    for domain_id, running_dom in list(running.items()):
        if running_dom is dom:
            del running[domain_id]


class RealisticDomainEvents(fixtures.Fixture):
    """Nova's fake libvirt with the lifecycle details libvirt sends.

    The fake sends STARTED_BOOTED when a domain is started (as libvirt) and
    STOPPED_SHUTDOWN whenever a running domain stops. Real libvirt 9.0 with
    QEMU 7.2 (tests/integration) sends SHUTDOWN_HOST then
    STOPPED_DESTROYED for a destroy, and SHUTDOWN_GUEST then
    STOPPED_SHUTDOWN for an ACPI shutdown even when the host asked for it;
    this fixture makes the fake do the same.
    """

    def _setUp(self):
        domain = fakelibvirt.Domain
        connection = fakelibvirt.Connection
        self._patch('Domain.destroy', self._destroy(domain.destroy))
        self._patch('Domain.shutdown', self._shutdown(domain.shutdown))
        self._patch('Connection._emit_lifecycle',
                    self._emit(connection._emit_lifecycle))

    def _patch(self, name, new):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.' + name, new))

    @staticmethod
    def _destroy(destroy):
        @functools.wraps(destroy)
        def wrapper(dom):
            if dom._state == RUNNING:
                dom._connection._emit_lifecycle(
                    dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                    libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST)
            dom._lifecycle_stopped_detail = (
                libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
            try:
                return destroy(dom)
            finally:
                del dom._lifecycle_stopped_detail
        return wrapper

    @staticmethod
    def _shutdown(shutdown):
        @functools.wraps(shutdown)
        def wrapper(dom):
            if dom._state == RUNNING:
                dom._connection._emit_lifecycle(
                    dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                    libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
            return shutdown(dom)
        return wrapper

    @staticmethod
    def _emit(emit):
        @functools.wraps(emit)
        def wrapper(conn, dom, event, detail):
            if event == libvirt_events.DOMAIN_EVENT_STOPPED:
                detail = getattr(dom, '_lifecycle_stopped_detail', detail)
            return emit(conn, dom, event, detail)
        return wrapper


def _get_all_domain_stats(conn, stats, flags=0):
    """libvirt's getAllDomainStats with the state group, for the fake."""
    conn._lifecycle_bulk_queries = getattr(
        conn, '_lifecycle_bulk_queries', 0) + 1
    return [(dom, {'state.state': dom._state, 'state.reason': 0})
            for dom in list(conn._vms.values())]


class BulkDomainStats(fixtures.Fixture):
    """Gives Nova's fake connection ``getAllDomainStats``.

    Each connection counts its calls in ``_lifecycle_bulk_queries``.
    """

    def _setUp(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Connection.getAllDomainStats',
            _get_all_domain_stats))


class ComputeApiCalls(fixtures.Fixture):
    """Records the compute API's ``stop`` and ``force_stop`` calls.

    The methods still run; each call is kept as (method name, instance
    UUID, the API object that was called), so a test can tell the compute
    manager's calls (its own ``compute_api``) from the REST API's. Only
    outermost calls count: ``stop`` itself calls ``force_stop``.
    """

    METHODS = ('stop', 'force_stop')

    def _setUp(self):
        self._lock = threading.Lock()
        self._local = threading.local()
        self.calls = []
        for name in self.METHODS:
            self.useFixture(fixtures.MonkeyPatch(
                'nova.compute.api.API.' + name,
                self._recording(name, getattr(compute_api.API, name))))

    def _recording(self, name, method):
        @functools.wraps(method)
        def wrapper(api, context, instance, *args, **kwargs):
            depth = getattr(self._local, 'depth', 0)
            if depth == 0:
                with self._lock:
                    self.calls.append((name, instance.uuid, api))
            self._local.depth = depth + 1
            try:
                return method(api, context, instance, *args, **kwargs)
            finally:
                self._local.depth = depth
        return wrapper

    def reset(self):
        with self._lock:
            del self.calls[:]

    def made(self, name, by=None):
        """UUIDs ``name`` was called for (by the API object ``by``)."""
        with self._lock:
            return [uuid for called, uuid, api in self.calls
                    if called == name and (by is None or api is by)]


class NotifierWithoutGreenlets(fixtures.Fixture):
    """nova 33's notification fixture under native threads.

    nova 33's ``FakeVersionedNotifier`` finds the test case that sent a
    notification by walking eventlet greenlet parents, which fails
    (AttributeError) on a native thread; nova 34 skips that check in
    threading mode, and so does this fixture: a notification counts as the
    running test's (``test_id``).
    """

    def __init__(self, test_id):
        super().__init__()
        self._test_id = test_id

    def _setUp(self):
        # A staticmethod in nova 33, a method in nova 34: take any args.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.notifications.FakeVersionedNotifier.'
            '_get_sender_test_case_id', lambda *args: self._test_id))


class SerializedSqlite(fixtures.Fixture):
    """nova 33's in-memory SQLite databases under native threads.

    nova 33's Database fixture shares one in-memory SQLite connection
    between all threads; under eventlet only one green thread uses it at a
    time, but native threads interleave their transactions on it
    ("cannot start a transaction within a transaction"). nova 34 moved its
    threading-mode tests to file-backed databases with a writer lock; here
    every transaction scope of every database takes one process-wide
    reentrant lock instead, which is enough for the few concurrent
    requests of these tests.
    """

    def _setUp(self):
        lock = threading.RLock()
        manager_class = enginefacade._TransactionContextManager
        scope = manager_class._transaction_scope

        @contextlib.contextmanager
        def serialized_scope(manager, context):
            with lock:
                with scope(manager, context) as resource:
                    yield resource

        self.useFixture(fixtures.MonkeyPatch(
            'oslo_db.sqlalchemy.enginefacade._TransactionContextManager.'
            '_transaction_scope', serialized_scope))


def harness_supports_threading():
    """True when Nova's functional fixtures handle native threads (34+)."""
    return hasattr(nova_fixtures, 'DatabaseWriteLock')


def lifecycle_counts(driver):
    """The driver's event ledger (``event_path.status().counts``)."""
    return driver.event_path.status().counts


class QueuedEvents(fixtures.Fixture):
    """Records what libvirt's lifecycle callbacks hand to the driver.

    Each item is (instance UUID, libvirt event and detail name, e.g.
    ``STOPPED_DESTROYED`` or ``SHUTDOWN_GUEST``), in the order libvirt's
    callback translated them: the driver's event translator
    (``event_handler.translator``) is wrapped, so a SHUTDOWN, which it keeps
    for the domain's next event instead of queueing it, is recorded as
    well; the driver still gets every event.
    """

    def __init__(self, driver):
        super().__init__()
        self._translator = driver.event_handler.translator

    def _setUp(self):
        self._lock = threading.Lock()
        self.items = []
        translate = self._translator.translate

        def recording(dom, event_type, detail):
            item = None
            if event_type == libvirt_events.DOMAIN_EVENT_SHUTDOWN:
                item = (dom.UUIDString(), libvirt_events.event_name(
                    libvirt_events.DOMAIN_EVENT_SHUTDOWN, detail))
            event = translate(dom, event_type, detail)
            if isinstance(event, libvirt_events.DomainLifecycleEvent):
                item = (event.uuid, event.detail_name)
            if item is not None:
                with self._lock:
                    self.items.append(item)
            return event

        self._translator.translate = recording
        self.addCleanup(delattr, self._translator, 'translate')

    def of(self, server):
        """libvirt event names queued for ``server`` so far, in order."""
        with self._lock:
            return [name for uuid, name in self.items if uuid == server['id']]


class LifecycleTestBase(libvirt_base.ServersTestBase):
    """One compute on the plugin, in Nova's functional deployment."""

    microversion = 'latest'
    ADMIN_API = True
    # RPC casts stay casts, as in a deployment: the power-state sync calls
    # the compute API's stop while it holds the instance's lock, which a
    # cast turned into a call would then wait for until the RPC timeout.
    CAST_AS_CALL = False

    def setUp(self):
        self.useFixture(fixtures.Timeout(TEST_TIMEOUT, gentle=True))
        self._threads_before = set(concurrency.plugin_threads())
        self.lifecycle_computes = {}
        if concurrency.threading_mode() and not harness_supports_threading():
            self.useFixture(NotifierWithoutGreenlets(self.id()))
            self.useFixture(SerializedSqlite())
        super().setUp()
        self.flags(stopped_event_grace=GRACE, stopped_event_delay=DELAY,
                   group='lifecycle')
        self.flags(instances=-1, cores=-1, ram=-1, group='quota')
        # Nova's harness keeps libvirt event threads off; the plugin's
        # computes run theirs, as in nova-compute.
        self.useFixture(lc_fixtures.LibvirtEvents())
        self.useFixture(RealisticDomainEvents())
        self.useFixture(BulkDomainStats())
        self.api_calls = self.useFixture(ComputeApiCalls())

    def _setup_services(self):
        path = api_paste_config()
        if path is not None:
            self.flags(api_paste_config=path, group='wsgi')
        super()._setup_services()

    def _setup_compute_service(self):
        # Nova's base chooses its libvirt driver here; the computes start
        # in the tests (start_lifecycle_compute).
        self.flags(compute_driver=DRIVER)

    # The compute service

    def start_lifecycle_compute(self, hostname='compute1'):
        """Start a compute on the plugin.

        It is stopped and checked after the test (see
        :meth:`_stop_compute_and_check`). ``self.compute_service``,
        ``manager``, ``driver``, ``connection`` and ``events`` are those of
        the compute started last; ``self.lifecycle_computes[hostname]`` has
        them for each compute.
        """
        self.start_compute(hostname)
        service = self.computes[hostname]
        driver = service.manager.driver
        self.assertEqual('LibvirtLifecycleDriver', type(driver).__name__)
        compute = types.SimpleNamespace(
            hostname=hostname, service=service, manager=service.manager,
            driver=driver, connection=self._connect_through_nova(driver._host),
            events=self.useFixture(QueuedEvents(driver)))
        self._watch_cleanup_host(driver)
        compute.cleanup_done = self._cleanup_done
        compute.cleanup_errors = self._cleanup_errors
        self.lifecycle_computes[hostname] = compute
        self.compute_service = service
        self.manager = compute.manager
        self.driver = driver
        self.connection = compute.connection
        self.events = compute.events
        # The check after the test means something only if they run.
        self.assertIn('lifecycle-libvirt-loop', self._new_plugin_threads())
        self.addCleanup(self._stop_compute_and_check, service)
        return service

    def _connect_through_nova(self, host):
        """Route the host's connection through Nova's own get_connection.

        Nova's base replaced it with a lambda returning the fake
        connection; with Nova's method back, connecting registers the
        lifecycle and close callbacks on the fake connection, and a new
        connection after a lost one raises the connection-up event.
        """
        connection = host.get_connection()
        host._connect = lambda uri, read_only: connection
        host.get_connection = types.MethodType(_REAL_GET_CONNECTION, host)
        self.assertIs(connection, host.get_connection())
        self.assertIn(fakelibvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                      connection._event_callbacks)
        return connection

    def _watch_cleanup_host(self, driver):
        """Note when the driver's cleanup_host returns, and what it raised.

        The manager calls it when the service stops (nova 34 on a thread of
        its own, after stop() returned; nova 33 within stop()).
        """
        done = self._cleanup_done = threading.Event()
        errors = self._cleanup_errors = []
        cleanup_host = driver.cleanup_host

        @functools.wraps(cleanup_host)
        def watched(*args, **kwargs):
            try:
                return cleanup_host(*args, **kwargs)
            except Exception as exc:
                errors.append(exc)
                raise
            finally:
                done.set()

        driver.cleanup_host = watched

    def _stop_compute_and_check(self, service):
        compute = self.lifecycle_computes.pop(service.host)
        driver = compute.driver
        stats = lifecycle_counts(driver)
        self.assert_ledger_balanced(stats)
        self.assertEqual({}, stats['failed_by_error'], stats)
        service.stop()
        self.assertTrue(compute.cleanup_done.wait(STOP_WAIT),
                        'the driver\'s cleanup_host did not return on %s'
                        % service.host)
        self.assertEqual([], compute.cleanup_errors)
        # The threads have the same names on every compute: look once the
        # last one has stopped.
        if not self.lifecycle_computes:
            self.assertEqual([], self._new_plugin_threads(),
                             'plugin threads left after cleanup_host')
        self.assert_ledger_balanced(lifecycle_counts(driver))
        self.assertIsNone(driver._compute_event_callback)

    def _new_plugin_threads(self):
        return [name for name in concurrency.plugin_threads()
                if name not in self._threads_before]

    # The plugin's ledger

    def lifecycle_stats(self):
        return lifecycle_counts(self.driver)

    def assert_ledger_balanced(self, stats=None):
        stats = stats or self.lifecycle_stats()
        self.assertEqual(
            stats['received'],
            stats['delivered'] + stats['cancelled'] + stats['failed'] +
            stats['pending'], stats)
        self.assertEqual(0, stats['double_ends'], stats)

    def stopped_cancelled(self, stats=None):
        """STOPPED events that a later event or the re-check cancelled."""
        stats = stats or self.lifecycle_stats()
        return sum(count for reason, count
                   in stats['cancelled_by_reason'].items()
                   if reason.startswith(STOPPED_REASONS))

    def wait_for_stats(self, predicate, what):
        """Wait until ``predicate(stats)``; fail naming ``what``."""
        ok = self.driver.event_path.wait_for_counts(predicate, WAIT)
        if not ok:
            self.fail('timed out waiting for %s; ledger: %s'
                      % (what, self.lifecycle_stats()))

    def wait_for_no_pending(self):
        self.wait_for_stats(lambda s: s['pending'] == 0,
                            'every event to be handled')

    # Nova's fake libvirt domains

    def domain(self, server):
        return self.connection.lookupByUUIDString(server['id'])

    def guest_stops(
            self, server,
            stopped_detail=libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN,
            shutdown_detail=libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST):
        """The guest stops by itself, and libvirt says so.

        By default it powers itself off: SHUTDOWN_GUEST, then
        STOPPED_SHUTDOWN. ``shutdown_detail`` None sends no SHUTDOWN event
        (a crash sends none).
        """
        dom = self.domain(server)
        self.assertEqual(RUNNING, dom._state)
        if shutdown_detail is not None:
            self.connection._emit_lifecycle(
                dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN, shutdown_detail)
        dom._state = SHUTOFF
        dom._lifecycle_stopped_detail = stopped_detail
        try:
            # The fake's STOPPED, with our detail (RealisticDomainEvents).
            self.connection._mark_not_running(dom)
        finally:
            del dom._lifecycle_stopped_detail

    def stale_guest_stop_events(self, server):
        """A guest power-off's events arrive, but the domain runs again.

        The events are late (or the STARTED that followed them was lost):
        when the plugin looks, the domain is running.
        """
        dom = self.domain(server)
        self.assertEqual(RUNNING, dom._state)
        self.connection._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        self.connection._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)

    def power_off_silently(self, server):
        """The domain stops and libvirt's events about it are lost."""
        power_off_silently(self.connection, self.domain(server))

    def power_on_silently(self, server):
        """The domain runs again and libvirt's events about it are lost."""
        dom = self.domain(server)
        conn = self.connection
        dom._state = RUNNING
        dom._id = conn._id_counter
        conn._running_vms[conn._id_counter] = dom
        conn._id_counter += 1

    # The API

    def server_status(self, server):
        """The API's status of the server and its task state."""
        shown = self.api.get_server(server['id'])
        return shown['status'], shown['OS-EXT-STS:task_state']

    def wait_for_status(self, server, status, timeout=WAIT):
        """Wait until the API shows ``status`` and no task in progress."""
        seen = wait_until(
            lambda: self.server_status(server) == (status, None),
            timeout=timeout, interval=0.1)
        if not seen:
            self.fail('server %s is %s, not %s, after %ss'
                      % (server['id'], self.server_status(server),
                         (status, None), timeout))

    def admin_context(self):
        return nova_context.get_admin_context()
