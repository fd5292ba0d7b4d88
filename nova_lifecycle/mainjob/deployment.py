"""Nova in one process, with one nova-compute on the driver under test.

Nova's functional-test harness runs the API (through its WSGI app),
conductor, scheduler and placement, with SQLite databases and in-process
messaging; it is a ``testtools`` test case, so a deployment is one: its
``setUp`` starts everything, its only test runs the scenarios
(``body(env)``), and its cleanups stop everything again. The functional
tests' fixtures are reused from :mod:`nova_lifecycle.tests.functional.base`
(realistic lifecycle details, the compute API call recorder, the bulk
stats call, and the two workarounds nova 33's harness needs under native
threads).

The compute's libvirt connection goes through Nova's own
``Host.get_connection`` (Nova's harness replaces it), so that lifecycle
callbacks are registered and a lost connection can come back. Upstream's
driver gets its event threads back (the harness disables them), with
loops that can be ended so the harness can tear down.
"""

import inspect
import os
import threading
import time
import types

import fixtures
from nova.compute import manager as compute_manager
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.api import client
from nova.tests.functional.libvirt import base as libvirt_base
from nova.virt import driver as virt_driver
from nova.virt.libvirt import host as nova_host

from nova_lifecycle import concurrency
from nova_lifecycle import conf  # noqa: F401 (registers [lifecycle])
from nova_lifecycle.mainjob import fakevirt
from nova_lifecycle.mainjob import results
from nova_lifecycle.mainjob import scenarios
from nova_lifecycle.tests.functional import base as func_base

# Nova's own method, taken before the harness mocks it.
_REAL_INIT_EVENTS = nova_host.Host._init_events

CONF = conf.CONF

HOSTNAME = 'compute1'
# [DEFAULT] shutdown_timeout for the stop scenarios: a guest that ignores
# ACPI is destroyed after this many seconds.
SHUTDOWN_TIMEOUT = 3
# Seconds between two reads of a server through the API.
POLL = 0.025
# Seconds the plugin may take to hand on every event it holds; a STOPPED
# held during an operation waits for stopped_event_delay at most.
SETTLE_WAIT = 30.0
# Seconds the compute may take to stop its threads once stopped.
STOP_WAIT = 30.0
# Prefix of the main job's own threads (not the plugin's).
MAINJOB_THREADS = concurrency.THREAD_PREFIX + 'mainjob-'


def graceful_shutdown_waits_for_tasks():
    """nova 34+: the manager waits for in-progress tasks, then cleans up.

    nova 33's manager sleeps ``manager_shutdown_timeout`` instead (its RPC
    server's stop already waited for running calls).
    """
    signature = inspect.signature(
        compute_manager.ComputeManager.graceful_shutdown)
    return 'timeout' in signature.parameters


def manager_shutdown_timeout():
    """[DEFAULT] manager_shutdown_timeout for the main job.

    Nova's harness sets 0 (no wait); a deployment has the option's default
    (160 s, capped at graceful_shutdown_timeout - 10 s), during which
    nova 34's manager waits for the tasks in progress (less 20 s kept for
    cleanup_host). nova 33's manager sleeps that long instead, after its
    RPC server waited for the calls in progress: 1 s there keeps the run
    short and changes nothing else.
    """
    if graceful_shutdown_waits_for_tasks():
        return CONF._opts['manager_shutdown_timeout']['opt'].default
    return 1


def plugin_threads():
    """The plugin's threads, without the main job's own."""
    return [name for name in concurrency.plugin_threads()
            if not name.startswith(MAINJOB_THREADS)]


def wait_until(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# Upstream's event threads, with an end.

def _native_loop(handler):
    while not getattr(handler, '_mainjob_stop', False):
        nova_host.libvirt.virEventRunDefaultImpl()


def _dispatch_loop(handler):
    while not getattr(handler, '_mainjob_stop', False):
        handler._dispatch_events()


def _conn_loop(host):
    while not getattr(host, '_mainjob_stop', False):
        host._dispatch_conn_event()


def _remove_timer(timer, opaque):
    nova_host.libvirt.virEventRemoveTimeout(timer)


class UpstreamEventThreads(fixtures.Fixture):
    """Upstream's libvirt event threads, running until :meth:`stop`.

    Nova's harness disables them (``Host._init_events``); this puts
    Nova's method back. Upstream's Host runs libvirt's event loop, the
    eventlet dispatcher and the connection-event dispatcher in endless
    loops; these versions check a flag between iterations, so that the
    harness's executors can shut down after the compute stopped. Every
    Host that started them has them stopped in cleanup at the latest (a
    compute that failed to start is never stopped).
    """

    def _setUp(self):
        self.hosts = []
        prefix = 'nova.virt.libvirt.host.'
        fixture = self

        def init_events(host):
            fixture.hosts.append(host)
            return _REAL_INIT_EVENTS(host)

        self.useFixture(fixtures.MonkeyPatch(prefix + 'Host._init_events',
                                             init_events))
        self.addCleanup(self._stop_all)
        for name, loop in (
                ('_ThreadingLibvirtEventHandler._native_thread',
                 _native_loop),
                ('_EventletLibvirtEventHandler._native_thread', _native_loop),
                ('_EventletLibvirtEventHandler._dispatch_thread',
                 _dispatch_loop),
                ('Host._conn_event_thread', _conn_loop)):
            self.useFixture(fixtures.MonkeyPatch(prefix + name, loop))

    def _stop_all(self):
        for host in self.hosts:
            if not getattr(host, '_mainjob_stop', False):
                self.stop(host)

    @staticmethod
    def stop(host, timeout=10):
        """End ``host``'s event threads; True when the loop thread ended."""
        handler = host._event_handler
        handler._mainjob_stop = True
        host._mainjob_stop = True
        host._conn_event_handler_queue.put(lambda: None)
        notify = getattr(handler, '_event_notify_send', None)
        if notify is not None:
            notify.write(b' ')
            notify.flush()
        add_timeout = getattr(nova_host.libvirt, 'virEventAddTimeout', None)
        if add_timeout is not None:
            add_timeout(0, _remove_timer, None)
        thread = getattr(handler, '_event_thread', None)
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()


class LoadedDrivers(fixtures.Fixture):
    """Keeps every compute driver nova-compute loads."""

    def _setUp(self):
        self.loaded = []
        load = virt_driver.load_compute_driver

        def loading(*args, **kwargs):
            driver = load(*args, **kwargs)
            self.loaded.append(driver)
            return driver

        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.driver.load_compute_driver', loading))


class GracefulStop:
    """The compute service's stop(), as on SIGTERM, on a thread of its own.

    Under eventlet the thread is a green thread, as nova-compute's signal
    handling would be.
    """

    def __init__(self, case):
        self._case = case
        self.error = None
        self._thread = threading.Thread(
            target=self._stop, name=MAINJOB_THREADS + 'compute-stop',
            daemon=True)
        self._thread.start()

    def _stop(self):
        try:
            self._case.compute_service.stop()
        except Exception as exc:
            self.error = exc

    def finish(self, timeout):
        """Wait for the stop; what went wrong, if anything."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            return ['the compute service did not stop within %.0f s'
                    % timeout]
        self._case.compute_stopped = True
        problems = []
        if self.error is not None:
            problems.append('the compute service\'s stop raised %r'
                            % (self.error,))
        return problems + self._case.after_compute_stop()


class Environment:
    """The deployment as the scenarios see it."""

    def __init__(self, case):
        self._case = case
        self.driver = case.driver_kind
        self.hv = case.hv
        self.servers = []
        self.settings = {
            'shutdown_timeout': CONF.shutdown_timeout,
            'stopped_event_grace': CONF.lifecycle.stopped_event_grace,
            'stopped_event_delay': CONF.lifecycle.stopped_event_delay,
            'manager_shutdown_timeout': CONF.manager_shutdown_timeout,
        }

    @staticmethod
    def now():
        return time.monotonic()

    @property
    def api(self):
        return self._case.api

    # Servers

    def boot(self, guest):
        body = self._case._build_server(
            networks='none', image_uuid=self.hv.image_for(guest))
        server = self.api.post_server({'server': body})
        self.hv.register(server, guest)
        self.servers.append(server)
        return server

    def delete_servers(self, timeout=scenarios.WAIT * 2):
        """Delete every server booted so far and wait until they are gone."""
        servers, self.servers = self.servers, []
        for server in servers:
            self.api.delete_server(server['id'])
        deadline = self.now() + timeout
        for server in servers:
            while True:
                try:
                    shown = self.api.get_server(server['id'])
                except client.OpenStackApiNotFoundException:
                    break
                if shown['status'] == 'ERROR':
                    raise scenarios.ScenarioFailed(
                        'server %s went to ERROR while deleted' % server['id'])
                if self.now() >= deadline:
                    raise scenarios.ScenarioFailed(
                        'server %s still %s %.0f s after its delete'
                        % (server['id'], shown['status'], timeout))
                time.sleep(POLL * 4)

    def act(self, server, body):
        """POST a server action; the time just before the request."""
        requested = self.now()
        self.api.post_server_action(server['id'], body)
        return requested

    def wait_status(self, server, status, timeout):
        """Time the API first showed ``status`` with no task in progress."""
        deadline = self.now() + timeout
        while True:
            shown = self.api.get_server(server['id'])
            now = self.now()
            task = shown.get('OS-EXT-STS:task_state')
            if shown['status'] == status and task is None:
                return now
            if shown['status'] == 'ERROR' and status != 'ERROR':
                raise scenarios.ScenarioFailed(
                    'server went to ERROR: %s'
                    % shown.get('fault', {}).get('message', 'no fault'))
            if now >= deadline:
                raise scenarios.ScenarioFailed(
                    'the API shows %s (task %s), not %s, after %.0f s'
                    % (shown['status'], task, status, timeout))
            time.sleep(POLL)

    # The compute

    @property
    def compute_driver(self):
        return self._case.compute_service.manager.driver

    def settle(self):
        """Wait until the plugin handled every event it received.

        Upstream's held STOPPED events (15 s) are waited for only before
        the compute is stopped (:meth:`settle_all`).
        """
        if self.driver != results.PLUGIN:
            return
        driver = self.compute_driver
        if not wait_until(lambda: driver.lifecycle_stats()['pending'] == 0,
                          SETTLE_WAIT):
            raise scenarios.ScenarioFailed(
                'the plugin still holds events after %.0f s: %s'
                % (SETTLE_WAIT, driver.lifecycle_stats()))

    def settle_all(self, timeout=SETTLE_WAIT):
        """Wait for every held STOPPED event, on either driver.

        True when none is left.
        """
        driver = self.compute_driver
        if self.driver == results.PLUGIN:
            return wait_until(
                lambda: driver.lifecycle_stats()['pending'] == 0, timeout)
        return wait_until(lambda: not driver._host._events_delayed, timeout)

    def compute_enabled(self):
        services = self.api.get_services(binary='nova-compute',
                                         host=HOSTNAME)
        return bool(services) and services[0]['status'] == 'enabled'

    def reconnect(self, timeout=scenarios.WAIT):
        """After libvirtd is back: the compute must be enabled again.

        The plugin reconnects by itself. Upstream reconnects when something
        next asks for the connection; in a deployment nova-compute's
        periodic tasks do within a minute, here (no periodic tasks) this
        asks.
        """
        if self.driver == results.UPSTREAM:
            self.compute_driver._host.get_connection()
        if not wait_until(self.compute_enabled, timeout, interval=0.2):
            raise scenarios.ScenarioFailed(
                'the compute service is still disabled %.0f s after '
                'libvirtd came back' % timeout)

    def manager_calls(self, uuid):
        """stop()/force_stop() calls the compute manager made for it."""
        by = self._case.compute_service.manager.compute_api
        calls = self._case.api_calls
        return sum(calls.made(name, by=by).count(uuid)
                   for name in calls.METHODS)

    def plugin_problems(self):
        """The plugin's ledger must balance and have no failed events."""
        if self.driver != results.PLUGIN:
            return []
        stats = self.compute_driver.lifecycle_stats()
        problems = []
        if stats['received'] != (stats['delivered'] + stats['cancelled'] +
                                 stats['failed'] + stats['pending']):
            problems.append('ledger does not balance: %s' % stats)
        if stats['failed_by_error']:
            problems.append('events failed: %s' % stats['failed_by_error'])
        return problems

    def watch_power_off(self):
        """An event set when the driver's power_off is next entered."""
        entered = threading.Event()
        driver = self.compute_driver
        power_off = driver.power_off

        def watched(*args, **kwargs):
            entered.set()
            return power_off(*args, **kwargs)

        driver.power_off = watched
        return entered

    def stop_compute_gracefully(self):
        return GracefulStop(self._case)


class DeploymentMixin:
    """What both deployments share; mixed in before Nova's test base.

    ``driver`` is 'plugin' or 'upstream'; ``body(env)`` runs as the test.
    Problems found while stopping the compute are in
    ``_teardown_problems`` (Nova's test case deletes its public attributes
    after the test). A subclass provides :meth:`_set_up_hypervisor` (the
    ``env.hv`` object) and :meth:`_start_compute_service`.
    """

    microversion = 'latest'
    ADMIN_API = True
    # Casts stay casts, as in a deployment (see the functional tests).
    CAST_AS_CALL = False

    def __init__(self, driver, body, log_path=None):
        super().__init__('test_main_job')
        self.driver_kind = driver
        self._body = body
        self._log_path = log_path
        self._teardown_problems = []
        self.compute_stopped = False
        self.compute_service = None
        self.env = None

    def id(self):
        return 'nova_lifecycle.mainjob.%s' % self.driver_kind

    def setUp(self):
        self.addCleanup(self._save_log)
        if (concurrency.threading_mode() and
                not func_base.harness_supports_threading()):
            self.useFixture(func_base.NotifierWithoutGreenlets(self.id()))
            self.useFixture(func_base.SerializedSqlite())
        super().setUp()
        self._log_fixture = self.stdlog.logger
        self.flags(instances=-1, cores=-1, ram=-1, group='quota')
        self.flags(shutdown_timeout=SHUTDOWN_TIMEOUT)
        self.flags(manager_shutdown_timeout=manager_shutdown_timeout())
        self.api_calls = self.useFixture(func_base.ComputeApiCalls())
        if self.driver_kind == results.UPSTREAM:
            self.useFixture(UpstreamEventThreads())
        self.hv = self._set_up_hypervisor()
        self.addCleanup(self._clean_up_hypervisor)
        self._threads_before = set(plugin_threads())
        drivers = self.useFixture(LoadedDrivers())
        try:
            self.compute_service = self._start_compute_service()
        except Exception:
            # The driver may have started its threads in init_host; no
            # service stop will ever wind them down.
            for driver in drivers.loaded:
                try:
                    driver.cleanup_host(HOSTNAME)
                except Exception as exc:
                    self._teardown_problems.append(
                        'cleanup_host after the failed start raised %r'
                        % (exc,))
            raise
        self.addCleanup(self._stop_compute)
        self.env = Environment(self)

    def _setup_services(self):
        path = func_base.api_paste_config()
        if path is not None:
            self.flags(api_paste_config=path, group='wsgi')
        super()._setup_services()

    def _setup_compute_service(self):
        # Nova's base starts a compute here; the deployment starts its own
        # once the hypervisor side is ready.
        self.flags(compute_driver=results.COMPUTE_DRIVERS[self.driver_kind])

    def test_main_job(self):
        self._body(self.env)

    def _stop_compute(self):
        self.computes.pop(HOSTNAME, None)
        if not self.compute_stopped:
            self.compute_stopped = True
            self.compute_service.stop()
            self._teardown_problems.extend(self.after_compute_stop())

    def _clean_up_hypervisor(self):
        self._teardown_problems.extend(self.hv.cleanup())

    def after_compute_stop(self):
        """Checks once the compute stopped; ends upstream's threads."""
        driver = self.compute_service.manager.driver
        if self.driver_kind == results.UPSTREAM:
            if not UpstreamEventThreads.stop(driver._host):
                return ['upstream\'s libvirt event thread did not end']
            return []
        problems = []

        def new_threads():
            return sorted(set(plugin_threads()) - self._threads_before)

        if not wait_until(lambda: not new_threads(), STOP_WAIT):
            problems.append('plugin threads left after the compute '
                            'stopped: %s' % ', '.join(new_threads()))
        problems.extend(self.env.plugin_problems() if self.env else [])
        if driver._compute_event_callback is not None:
            problems.append('the compute manager is still registered')
        return problems

    def _save_log(self):
        logger = getattr(self, '_log_fixture', None)
        if self._log_path is None or logger is None:
            return
        os.makedirs(os.path.dirname(self._log_path) or '.', exist_ok=True)
        with open(self._log_path, 'w') as f:
            f.write(logger.output)


class FakeDeployment(DeploymentMixin, libvirt_base.ServersTestBase):
    """Nova with one compute on Nova's fake libvirt."""

    def _set_up_hypervisor(self):
        self.useFixture(func_base.RealisticDomainEvents())
        self.useFixture(func_base.BulkDomainStats())
        timeline = self.useFixture(fakevirt.EventTimeline())
        self.useFixture(fakevirt.PauseEvents())
        guests = self.useFixture(fakevirt.FakeGuests())
        return fakevirt.FakeHypervisor(timeline, guests)

    def _start_compute_service(self):
        self.start_compute(HOSTNAME)
        service = self.computes[HOSTNAME]
        host = service.manager.driver._host
        # Nova's base made get_connection a lambda returning the fake
        # connection: connect through Nova's own method instead, via the
        # fake hypervisor (which can refuse, as a stopped libvirtd).
        connection = host.get_connection()
        self.hv.attach(host, connection)
        host.get_connection = types.MethodType(
            func_base._REAL_GET_CONNECTION, host)
        self.assertIs(connection, host.get_connection())
        self.assertIn(fakelibvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                      connection._event_callbacks)
        return service
