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

"""The deployment as the scenarios see it: the API, the compute, waits.

:class:`Environment` is the ``env`` of the scenarios
(:mod:`mainjob.scenarios`): it boots servers and acts on
them through Nova's REST API (the harness's client, as admin), polls the
API for a state, waits for the driver to handle its events, counts the
compute manager's stop()/force_stop() calls and stops the compute service
as on SIGTERM (:class:`GracefulStop`).
"""

import threading
import time

from nova.tests.functional.api import client

from mainjob import domains
from mainjob import results
from mainjob import scenarios
from nova_lifecycle import concurrency
from nova_lifecycle import conf
from nova_lifecycle.tests.functional import base as func_base

CONF = conf.CONF

# Bounded polling of a condition, as in the functional tests.
wait_until = func_base.wait_until

HOSTNAME = 'compute1'
# Seconds between two reads of a server through the API.
POLL = 0.025
# Seconds the plugin may take to hand on every event it holds; a STOPPED
# held during an operation waits for stopped_event_delay at most.
SETTLE_WAIT = 30.0
# Prefix of the main job's own threads (not the plugin's).
MAINJOB_THREADS = domains.MAINJOB_THREADS


def plugin_threads():
    """The plugin's threads, without the main job's own."""
    return [name for name in concurrency.plugin_threads()
            if not name.startswith(MAINJOB_THREADS)]


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
            # None on nova 31 and 32, which have no graceful shutdown.
            'manager_shutdown_timeout': (
                CONF.manager_shutdown_timeout
                if 'manager_shutdown_timeout' in CONF else None),
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
        path = self.compute_driver.event_path
        if not path.wait_for_counts(lambda c: c['pending'] == 0,
                                    SETTLE_WAIT):
            raise scenarios.ScenarioFailed(
                'the plugin still holds events after %.0f s: %s'
                % (SETTLE_WAIT, path.status().counts))

    def settle_all(self, timeout=SETTLE_WAIT):
        """Wait for every held STOPPED event, on either driver.

        True when none is left.
        """
        driver = self.compute_driver
        if self.driver == results.PLUGIN:
            return driver.event_path.wait_for_counts(
                lambda c: c['pending'] == 0, timeout)
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
        stats = self.compute_driver.event_path.status().counts
        problems = []
        if stats['double_ends'] or stats['received'] != (
                stats['delivered'] + stats['cancelled'] + stats['failed'] +
                stats['pending']):
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
