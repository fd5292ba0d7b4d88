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

"""Nova in one process, with one nova-compute on the driver under test.

Nova's functional-test harness runs the API (through its WSGI app),
conductor, scheduler and placement, with SQLite databases and in-process
messaging; it is a ``testtools`` test case, so a deployment is one: its
``setUp`` starts everything, its only test runs the scenarios
(``body(env)``, see :mod:`mainjob.environment`), and its
cleanups stop everything again. The functional tests' fixtures are reused
from :mod:`nova_lifecycle.tests.functional.base` (realistic lifecycle
details, the compute API call recorder, the bulk stats call, and the two
workarounds nova 33's harness needs under native threads).
:class:`FakeDeployment` runs on Nova's fake libvirt;
:mod:`mainjob.realvirt` has the real one. Upstream's driver
gets its event threads back (:mod:`mainjob.upstream`).
"""

import inspect
import os
import types

import fixtures
from nova.compute import manager as compute_manager
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.tests.functional.libvirt import base as libvirt_base
from nova.virt import driver as virt_driver

from mainjob import environment
from mainjob import fakevirt
from mainjob import results
from mainjob import upstream
from nova_lifecycle import concurrency
from nova_lifecycle import conf
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.functional import base as func_base

CONF = conf.CONF

HOSTNAME = environment.HOSTNAME
# [DEFAULT] shutdown_timeout for the stop scenarios: a guest that ignores
# ACPI is destroyed after this many seconds.
SHUTDOWN_TIMEOUT = 3
# Seconds the compute may take to stop its threads once stopped.
STOP_WAIT = 30.0
# Seconds between two writes of the plugin's metrics textfile (15 by
# default; the scenarios are short).
METRICS_INTERVAL = 2


def has_graceful_shutdown():
    """nova 33+: the manager's graceful_shutdown and manager_shutdown_timeout.

    Nova 31 and 32's service stops its RPC server, which waits for the
    calls in progress, then calls cleanup_host.
    """
    return hasattr(compute_manager.ComputeManager, 'graceful_shutdown')


def graceful_shutdown_waits_for_tasks():
    """nova 34+: the manager waits for in-progress tasks, then cleans up.

    nova 33's manager sleeps ``manager_shutdown_timeout`` instead (its RPC
    server's stop already waited for running calls).
    """
    if not has_graceful_shutdown():
        return False
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
        return 'mainjob.%s' % self.driver_kind

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
        if has_graceful_shutdown():
            self.flags(manager_shutdown_timeout=manager_shutdown_timeout())
        self.api_calls = self.useFixture(func_base.ComputeApiCalls())
        if self.driver_kind == results.UPSTREAM:
            self.useFixture(upstream.UpstreamEventThreads())
        else:
            # Nova's harness keeps libvirt events off; the plugin starts
            # its own in Host._init_events, as in nova-compute.
            self.useFixture(lc_fixtures.LibvirtEvents())
            if self._log_path is not None:
                # What an operator's node-exporter would scrape.
                self.flags(metrics_textfile=metrics_path(self._log_path),
                           metrics_interval=METRICS_INTERVAL,
                           group='lifecycle')
        self.hv = self._set_up_hypervisor()
        self.addCleanup(self._clean_up_hypervisor)
        self._threads_before = set(environment.plugin_threads())
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
        self.env = environment.Environment(self)

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
        # The scenarios are over: the services stop without waiting (nova
        # 33's compute, conductor and scheduler each sleep
        # manager_shutdown_timeout in their graceful shutdown).
        if has_graceful_shutdown():
            self.flags(manager_shutdown_timeout=0)

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
            if not upstream.UpstreamEventThreads.stop(driver._host):
                return ['upstream\'s libvirt event thread did not end']
            return []
        problems = []

        def new_threads():
            return sorted(set(environment.plugin_threads()) -
                          self._threads_before)

        if not environment.wait_until(lambda: not new_threads(), STOP_WAIT):
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


def metrics_path(log_path):
    """The plugin's Prometheus textfile, beside its deployment's log."""
    return os.path.join(os.path.dirname(log_path) or '.',
                        results.METRICS_FILE)


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
