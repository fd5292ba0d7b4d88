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

"""The services deployment as the scenarios see it.

:class:`ServicesEnvironment` has the methods of
:class:`mainjob.environment.Environment` that the scenarios and the
runner call, done from outside: the REST API, the deployment's script,
the plugin's Prometheus textfile and libvirt. :class:`ServicesHypervisor`
is its ``env.hv``: the test guest's images in Glance, the guests' consoles
in the instances directory, the domain watcher of :mod:`mainjob.domains`.
"""

import os
import subprocess
import time
import uuid

import libvirt

from mainjob import domains
from mainjob import results
from mainjob import scenarios
from mainjob import services_api

URI = 'qemu:///system'
# Seconds between two reads of a server through the API (each one goes
# through Keystone's token check and MariaDB: 20 to 40 ms here).
POLL = 0.05
SETTLE_WAIT = 30.0
# Upstream re-enables the compute when something next asks for the
# connection: nova-compute's periodic tasks, every 60 s.
RECONNECT_WAIT = {results.PLUGIN: scenarios.WAIT, results.UPSTREAM: 90.0}
FLAVOR = 'lifecycle.tiny'
# Seconds nova-compute may take to exit on SIGTERM (systemd's default).
STOP_TIMEOUT = 90
KERNEL, RAMDISK = 'nova-lifecycle-guest-kernel', 'nova-lifecycle-guest-ramdisk'


class ServicesHypervisor(domains.GuestSide):
    """``env.hv``: the deployment's libvirtd, seen from outside Nova."""

    kind = 'services'
    restart_wait = 30.0
    delete_servers = True

    def __init__(self, api, directory):
        self._api = api
        self._dir = directory
        self.instances_path = os.path.join(directory, 'data', 'nova',
                                           'instances')
        self._images = {}
        self._guests = {}
        self._own_restarts = []
        self.watcher = domains.DomainWatcher(URI)

    def image_for(self, guest):
        """A Glance image that boots this guest (found or made once)."""
        if guest in self._images:
            return self._images[guest]
        conn = self._api.conn
        name = 'nova-lifecycle-guest %s' % self.command_line(guest)
        found = conn.image.find_image(name)
        if found is None or found.status != 'active':
            if found is not None:
                conn.image.delete_image(found)
            kernel = conn.image.find_image(KERNEL, ignore_missing=False)
            ramdisk = conn.image.find_image(RAMDISK, ignore_missing=False)
            found = conn.create_image(
                name, filename=os.path.join(self._dir, 'data', 'root.img'),
                disk_format='raw', container_format='bare',
                visibility='public', wait=True, kernel_id=kernel.id,
                ramdisk_id=ramdisk.id,
                os_command_line=self.command_line(guest))
        self._images[guest] = found.id
        return found.id

    def register(self, server, guest):
        self._guests[server['id']] = guest
        self.watcher.watch(server['id'])

    def console(self, server):
        path = os.path.join(self.instances_path, server['id'], 'console.log')
        try:
            with open(path, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def state(self, server):
        return self.watcher.state(server['id'])

    def last_change(self, server, after):
        """When the domain last changed state after ``after``, or None."""
        return self.watcher.last(server['id'], after)

    def destroy(self, server):
        """Destroy the domain behind Nova's back (as ``virsh destroy``)."""
        conn = libvirt.open(URI)
        try:
            conn.lookupByUUIDString(server['id']).destroy()
        finally:
            conn.close()
        return time.monotonic()

    def cleanup(self):
        if not self.watcher.stop():
            return ['%s did not stop' % domains.WATCH_THREAD]
        if self.watcher.errors:
            return ['the domain watcher failed: %r' % self.watcher.errors[:3]]
        return []


class PowerOffEntered:
    """Set once the compute started the stop of the last server acted on.

    The compute manager's ``compute_stop_instance`` event of the stop's
    instance action: its handler is running, the driver's power_off next.
    """

    def __init__(self, env):
        self._env = env

    def wait(self, timeout):
        deadline = time.monotonic() + timeout
        server = self._env.last_acted
        while time.monotonic() < deadline:
            for action in self._env.api.actions(server['id']):
                if action['action'] != 'stop':
                    continue
                events = self._env.api.action_events(server['id'],
                                                     action['request_id'])
                if any(e['event'] == 'compute_stop_instance'
                       for e in events):
                    return True
            time.sleep(0.1)
        return False


class ComputeStop:
    """SIGTERM to nova-compute (``services.sh stop``), on its own process.

    SIGKILL after :data:`STOP_TIMEOUT` s, as systemd's default
    TimeoutStopSec would.
    """

    def __init__(self, env):
        self._env = env
        self.started = time.monotonic()
        self._proc = subprocess.Popen(
            [services_api.SCRIPT, 'stop', 'nova-compute'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=services_api.script_env(
                env.directory,
                {'NOVA_LIFECYCLE_SERVICES_STOP_TIMEOUT': str(STOP_TIMEOUT)}))
        self.seconds = None

    def finish(self, timeout):
        """Wait until nova-compute exited; what went wrong, if anything.

        At least until the script's SIGKILL, whatever ``timeout`` says.
        """
        timeout = max(timeout, STOP_TIMEOUT + 15)
        try:
            out, _ = self._proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.seconds = timeout
            return ['nova-compute did not stop within %.0f s' % timeout]
        self.seconds = time.monotonic() - self.started
        self._env.compute_running = False
        self._env.log_script('stop nova-compute', out)
        problems = []
        if self._proc.returncode != 0:
            problems.append('tools/services.sh stop nova-compute failed: %s'
                            % out.strip()[-300:])
        if 'ignored SIGTERM' in out:
            problems.append('nova-compute had not exited %d s after SIGTERM '
                            'and was killed' % STOP_TIMEOUT)
        return problems + self._env.plugin_problems(final=True)


class ServicesEnvironment:
    """The services deployment as the scenarios see it."""

    def __init__(self, api, driver, directory, options, metrics_path,
                 script_log=None):
        self.api = api
        self.driver = driver
        self.directory = directory
        self.options = dict(options)
        self.metrics_path = metrics_path
        self.script_log = script_log
        self.hv = ServicesHypervisor(api, directory)
        self.compute_log = os.path.join(directory, 'log', 'nova-compute.log')
        self.servers = []
        self.last_acted = None
        self.first_mismatches = None
        self.compute_running = True
        self.compute_started = time.monotonic()
        self._tolerated = {}
        self._flavor = api.flavor_id(FLAVOR)
        self.settings = settings(options)

    @staticmethod
    def now():
        return time.monotonic()

    def sleep_until(self, when):
        time.sleep(max(0.0, when - self.now()))

    def compute_log_mark(self):
        """Where nova-compute's log ends now."""
        try:
            return os.path.getsize(self.compute_log)
        except OSError:
            return 0

    def failed_syncs_since(self, mark):
        """Periodic power-state syncs that failed since ``mark``."""
        with open(self.compute_log, errors='replace') as f:
            f.seek(mark)
            return sum(1 for line in f
                       if 'Error during ComputeManager._sync_power_states'
                       in line)

    # The deployment's script

    def log_script(self, what, output):
        if self.script_log:
            with open(self.script_log, 'a') as f:
                f.write('$ tools/services.sh %s\n%s' % (what, output))

    def script(self, *args):
        return services_api.services_sh(
            self.directory, args, self.script_log,
            metrics_env(self.metrics_path))

    def stop_service(self, name):
        self.script('stop', name)
        if name == 'nova-compute':
            self.compute_running = False

    def start_service(self, name):
        self.script('start', name)
        if name == 'nova-compute':
            self._compute_started()

    def restart_compute(self, **options):
        """nova-compute again on this driver, with these options added."""
        self.options.update(options)
        self.settings = settings(self.options)
        self.script('compute-driver', self.driver,
                    *services_api.compute_options(self.options))
        self._compute_started()

    def _compute_started(self):
        self.compute_running = True
        self.compute_started = time.monotonic()
        self._tolerated = {}

    # Servers

    def boot(self, guest):
        server = self.api.create_server(
            'mainjob-%s-%s' % (self.driver, uuid.uuid4().hex[:6]),
            self.hv.image_for(guest), self._flavor)
        server = {'id': server['id']}
        self.hv.register(server, guest)
        self.servers.append(server)
        return server

    def delete_servers(self, timeout=scenarios.WAIT * 2):
        servers, self.servers = self.servers, []
        for server in servers:
            self.api.delete_server(server['id'])
        deadline = self.now() + timeout
        for server in servers:
            while True:
                shown = self.api.get_server(server['id'])
                if shown is None:
                    break
                if self.now() >= deadline:
                    raise scenarios.ScenarioFailed(
                        'server %s still %s %.0f s after its delete'
                        % (server['id'], shown['status'], timeout))
                time.sleep(POLL * 4)

    def act(self, server, body):
        requested = self.now()
        self.last_acted = server
        self.api.action(server['id'], body)
        return requested

    def wait_status(self, server, status, timeout):
        """Time the API first showed ``status`` with no task in progress."""
        deadline = self.now() + timeout
        while True:
            shown = self.api.get_server(server['id'])
            now = self.now()
            if shown is None:
                raise scenarios.ScenarioFailed('server %s is gone'
                                               % server['id'])
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

    def mismatches(self, servers):
        """{server id: why the API and libvirt disagree} for ``servers``."""
        found = {}
        for server in servers:
            shown = self.api.get_server(server['id'])
            if shown is None:
                found[server['id']] = 'gone from the API'
                continue
            why = services_api.matches(shown, self.hv.state(server))
            if why:
                found[server['id']] = why
        return found

    def wait_consistent(self, servers, timeout):
        """Time the API agreed with libvirt on all of ``servers``.

        ``first_mismatches`` keeps what disagreed at the first look.
        """
        deadline = self.now() + timeout
        self.first_mismatches = None
        while True:
            found = self.mismatches(servers)
            if self.first_mismatches is None:
                self.first_mismatches = found
            if not found:
                return self.now()
            if self.now() >= deadline:
                raise scenarios.ScenarioFailed(
                    'after %.0f s the API and libvirt still disagree: %s'
                    % (timeout, '; '.join('%s: %s' % (uuid_[:8], why)
                                          for uuid_, why in found.items())))
            time.sleep(POLL * 4)

    def wait_services_up(self, timeout=scenarios.BOOT_WAIT):
        """Every nova service reported up again (after an outage)."""
        deadline = self.now() + timeout
        while True:
            down = sorted('%s %s' % (s['binary'], s['state'])
                          for s in self.api.services()
                          if s['state'] != 'up')
            if not down:
                return
            if self.now() >= deadline:
                raise scenarios.ScenarioFailed(
                    'nova services still not up %.0f s later: %s'
                    % (timeout, ', '.join(down)))
            time.sleep(1)

    # The compute

    def metrics(self, since=None):
        """The plugin's ledger from its textfile (written after ``since``)."""
        try:
            if since is not None and os.stat(
                    self.metrics_path).st_mtime < since:
                return None
            with open(self.metrics_path) as f:
                return services_api.parse_metrics(f.read())
        except FileNotFoundError:
            return None

    def _wait_pending_zero(self, timeout):
        since = time.time()
        deadline = self.now() + timeout
        while self.now() < deadline:
            counts = self.metrics(since)
            if counts is not None and counts['pending'] == 0:
                return True
            time.sleep(0.2)
        return False

    def settle(self):
        """Wait until the plugin handled every event it received."""
        if self.driver != results.PLUGIN or not self.compute_running:
            return
        if not self._wait_pending_zero(SETTLE_WAIT):
            raise scenarios.ScenarioFailed(
                'the plugin still holds events after %.0f s: %s'
                % (SETTLE_WAIT, self.metrics()))

    def settle_all(self, timeout=SETTLE_WAIT):
        """Wait for held STOPPED events; upstream's: 15 s after a stop."""
        if not self.compute_running:
            return True
        if self.driver == results.PLUGIN:
            return self._wait_pending_zero(timeout)
        last = self.hv.watcher.last_of('shutoff')
        if last is None:
            return True
        until = last + self.settings['stopped_event_delay'] + 1
        time.sleep(max(0.0, min(until - self.now(), timeout)))
        return self.now() >= until

    def compute_enabled(self):
        services = self.api.compute_services()
        return bool(services) and all(s['status'] == 'enabled' and
                                      s['state'] == 'up' for s in services)

    def reconnect(self, timeout=None):
        """After libvirtd is back: the compute must be enabled again."""
        timeout = timeout or RECONNECT_WAIT[self.driver]
        deadline = self.now() + timeout
        while not self.compute_enabled():
            if self.now() >= deadline:
                # The later scenarios need a compute that takes servers.
                self.stop_service('nova-compute')
                self.start_service('nova-compute')
                raise scenarios.ScenarioFailed(
                    'the compute service was still disabled %.0f s after '
                    'libvirtd came back (nova-compute restarted to go on)'
                    % timeout)
            time.sleep(0.5)

    def manager_calls(self, uuid_):
        """stop()/force_stop() calls of the compute manager (no user)."""
        return sum(1 for action in self.api.actions(uuid_)
                   if action['action'] == 'stop' and not action['user_id'])

    def accept_event_failures(self):
        """Events that failed so far were the outage's: not counted."""
        counts = self.metrics()
        self._tolerated = dict(counts['failed_by_error']) if counts else {}
        return sum(self._tolerated.values())

    def plugin_problems(self, final=False):
        """The plugin's ledger (its textfile) must balance, nothing failed.

        ``final``: the textfile the stopping compute wrote last.
        """
        if self.driver != results.PLUGIN:
            return []
        if not final and not self.compute_running:
            return []
        counts = self.metrics()
        if counts is None:
            return ['the plugin wrote no metrics textfile (%s)'
                    % self.metrics_path]
        return services_api.ledger_problems(counts, self._tolerated)

    def watch_power_off(self):
        return PowerOffEntered(self)

    def stop_compute_gracefully(self):
        return ComputeStop(self)


def metrics_env(path):
    """The [lifecycle] options for the plugin's textfile, as variables."""
    return {'NOVA_LIFECYCLE_METRICS_TEXTFILE': path,
            'NOVA_LIFECYCLE_METRICS_INTERVAL': '1'}


def settings(options):
    """What the table's settings line shows for the compute's options."""
    from nova_lifecycle import conf
    lifecycle = conf.CONF.lifecycle
    return {
        'shutdown_timeout': int(options.get('shutdown_timeout', 60)),
        'stopped_event_grace': lifecycle.stopped_event_grace,
        'stopped_event_delay': lifecycle.stopped_event_delay,
        'sync_power_state_interval': int(
            options.get('sync_power_state_interval', 600)),
        'periodic_fuzzy_delay': int(options.get('periodic_fuzzy_delay', 60)),
    }
