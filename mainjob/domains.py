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

"""The test guest's side of a real libvirtd, without Nova.

What the main job's real modes share (:mod:`mainjob.realvirt`, Nova in one
process, and :mod:`mainjob.services`, the deployment of
``tools/services.sh``): the watcher that times the domains' state changes
(:class:`DomainWatcher`), the guest-side waits and checks
(:class:`GuestSide`), and stopping and starting libvirtd. Only libvirt's
Python binding is needed.
"""

import glob
import os
import signal
import subprocess
import time

import libvirt

from mainjob import scenarios
from nova_lifecycle import concurrency

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP_SCRIPT = os.path.join(TOP, 'tools', 'libvirt-setup.sh')

# What the test guest's /init prints on its serial console.
READY = 'nova-lifecycle-guest: ready'
POWERING_OFF = 'nova-lifecycle-guest: powering off'

# Seconds between two reads of the domains' states.
POLL = 0.02
# Seconds a real guest may take from ACTIVE to its ready line (TCG, a busy
# 2-core machine).
READY_WAIT = 90.0
# Prefix of the main job's own threads (not the plugin's).
MAINJOB_THREADS = concurrency.THREAD_PREFIX + 'mainjob-'
WATCH_THREAD = MAINJOB_THREADS + 'domain-watch'

# libvirt's domain states, as the scenarios name them.
_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: 'running',
    libvirt.VIR_DOMAIN_BLOCKED: 'running',
    # Shutting down: still running until it is off.
    libvirt.VIR_DOMAIN_SHUTDOWN: 'running',
    libvirt.VIR_DOMAIN_PAUSED: 'paused',
    libvirt.VIR_DOMAIN_PMSUSPENDED: 'paused',
    libvirt.VIR_DOMAIN_SHUTOFF: 'shutoff',
    libvirt.VIR_DOMAIN_CRASHED: 'shutoff',
}
# A domain that is gone counts as off.
_MATCHES = {'running': ('running',), 'paused': ('paused',),
            'shutoff': ('shutoff', 'gone')}


def quiet(ctx, error):
    """libvirt-python prints every error to stderr by default."""


class DomainWatcher:
    """Reads the watched domains' states every :data:`POLL` seconds.

    Runs on a native thread (:data:`WATCH_THREAD`) with its own libvirt
    connection, opened again whenever it breaks (libvirtd restarted); it
    keeps, per UUID, the times the state changed.
    """

    def __init__(self, uri):
        native = concurrency.native_threading()
        # A domain that is gone is an answer here, not an error to print.
        libvirt.registerErrorHandler(quiet, None)
        self._uri = uri
        self._lock = native.Lock()
        self._stopping = native.Event()
        self._watched = {}        # uuid -> (state, domain ID) last seen
        self._changes = []        # (time, uuid, state)
        self.names = {}           # uuid -> libvirt domain name
        self.errors = []
        # (start, end) of each time the watcher could not reach libvirtd.
        self.outages = []
        self._down_since = None
        self._conn = None
        self._thread = native.Thread(target=self._run, name=WATCH_THREAD,
                                     daemon=True)
        self._thread.start()

    def watch(self, uuid):
        with self._lock:
            self._watched.setdefault(uuid, (None, None))

    def first(self, uuid, state, after):
        """When the domain was first seen in ``state``, from ``after``."""
        with self._lock:
            for when, seen, name in self._changes:
                if seen == uuid and name in _MATCHES[state] and when >= after:
                    return when
        return None

    def state(self, uuid):
        """The state last read ('running', 'paused', 'shutoff', 'gone')."""
        with self._lock:
            return self._watched[uuid][0]

    def outages_since(self, since):
        """Outages (start, end or None) that ended after ``since``."""
        with self._lock:
            found = [(a, b) for a, b in self.outages if b >= since]
            if self._down_since is not None:
                found.append((self._down_since, None))
        return found

    def last(self, uuid, after):
        """When the domain last changed state from ``after``, or None."""
        with self._lock:
            times = [when for when, seen, _ in self._changes
                     if seen == uuid and when >= after]
        return max(times) if times else None

    def last_of(self, state):
        """The last time any watched domain was seen in ``state``."""
        with self._lock:
            times = [when for when, _, name in self._changes
                     if name in _MATCHES[state]]
        return max(times) if times else None

    def seen(self, uuid):
        with self._lock:
            return ['%.2f %s' % (when, name)
                    for when, seen, name in self._changes if seen == uuid]

    def _run(self):
        sleep = concurrency.native_time().sleep
        while not self._stopping.is_set():
            try:
                self._read_all()
            except libvirt.libvirtError:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                self._drop_connection()
                sleep(0.2)
                continue
            except Exception as exc:
                # This thread never logs: kept for the report.
                self.errors.append(exc)
            self._stopping.wait(POLL)
        self._drop_connection()

    def _drop_connection(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

    def _read_all(self):
        if self._conn is None:
            self._conn = libvirt.open(self._uri)
        with self._lock:
            uuids = list(self._watched)
            if self._down_since is not None:
                self.outages.append((self._down_since, time.monotonic()))
                self._down_since = None
        for watched in uuids:
            self._read(watched)

    def _read(self, server_id):
        try:
            dom = self._conn.lookupByUUIDString(server_id)
            state = _STATES.get(dom.state()[0], 'other')
            dom_id = dom.ID()
            self.names.setdefault(server_id, dom.name())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            state, dom_id = 'gone', None
        now = time.monotonic()
        with self._lock:
            last_state, last_id = self._watched[server_id]
            if (state == 'running' and last_state == 'running' and
                    dom_id != last_id):
                # Stopped and started again between two reads.
                self._changes.append((now, server_id, 'shutoff'))
                self._changes.append((now, server_id, 'running'))
            elif state != last_state:
                self._changes.append((now, server_id, state))
            self._watched[server_id] = (state, dom_id)

    def stop(self):
        self._stopping.set()
        self._thread.join(10)
        return not self._thread.is_alive()


class GuestSide:
    """Waits and checks on the test guest; ``env.hv``'s shared part.

    A subclass has ``watcher`` (a :class:`DomainWatcher`), ``_guests``
    (server id -> :class:`~mainjob.scenarios.Guest`), ``_own_restarts``
    (a list) and :meth:`console`.
    """

    @staticmethod
    def command_line(guest):
        words = ['console=ttyS0', 'quiet', 'panic=0',
                 'lc.acpi=%s' % guest.acpi]
        if guest.poweroff_after is not None:
            words.append('lc.poweroff_after=%d' % guest.poweroff_after)
        return ' '.join(words)

    def wait_console(self, server, text, timeout):
        """Time ``text`` was first seen on the guest's console."""
        deadline = time.monotonic() + timeout
        while text not in self.console(server):
            if time.monotonic() >= deadline:
                raise scenarios.ScenarioFailed(
                    'no %r on the guest\'s console within %.0f s; console '
                    'ends with: %r' % (text, timeout,
                                       self.console(server)[-300:]))
            time.sleep(POLL)
        return time.monotonic()

    def wait_ready(self, server):
        self.wait_console(server, READY, READY_WAIT)

    # States

    def change_time(self, server, state, after):
        when = self.watcher.first(server['id'], state, after)
        if when is None:
            raise scenarios.ScenarioFailed(
                'the watcher saw no %s domain; it saw: %s'
                % (state, ', '.join(self.watcher.seen(server['id']))))
        return when

    def guest(self, server):
        """The :class:`~mainjob.scenarios.Guest` the server boots."""
        return self._guests[server['id']]

    def wait_state(self, server, state, after, timeout):
        """When the domain was first seen in ``state`` from ``after``."""
        return self._wait_state(server, state, after, timeout)

    def _wait_state(self, server, state, after, timeout):
        deadline = time.monotonic() + timeout
        while True:
            when = self.watcher.first(server['id'], state, after)
            if when is not None:
                return when
            if time.monotonic() >= deadline:
                raise scenarios.ScenarioFailed(
                    'the domain was not %s within %.0f s; seen: %s'
                    % (state, timeout,
                       ', '.join(self.watcher.seen(server['id']))))
            time.sleep(POLL)

    def assert_running(self, server):
        state = self.watcher.state(server['id'])
        if state != 'running':
            raise scenarios.ScenarioFailed('domain %s, not running' % state)

    def guest_power_off(self, server):
        """Wait for the guest to power itself off (it was booted to)."""
        guest = self._guests[server['id']]
        if guest.poweroff_after is None:
            raise scenarios.ScenarioFailed('this guest never powers off')
        return self._wait_state(server, 'shutoff', time.monotonic(),
                                guest.poweroff_after + READY_WAIT)

    def restart_libvirtd_while_guest_powers_off(self, server):
        """Stop libvirtd, let the guest power off, start libvirtd.

        The guest is ready (its power-off timer runs); libvirtd is stopped
        at once, the guest's "powering off" line appears on its console
        (virtlogd keeps writing it) while libvirtd is down, and libvirtd is
        started again, whatever happened once it was stopped. Returns the
        time that line appeared.
        """
        guest = self._guests[server['id']]
        if guest.poweroff_after is None:
            raise scenarios.ScenarioFailed('this guest never powers off')
        began = time.monotonic()
        try:
            stop_libvirtd()
            try:
                if POWERING_OFF in self.console(server):
                    raise scenarios.ScenarioFailed(
                        'the guest powered off before libvirtd had stopped')
                changed = self.wait_console(server, POWERING_OFF,
                                            guest.poweroff_after + 30)
            finally:
                start_libvirtd()
        finally:
            # The watcher notices the restart a moment later.
            self._own_restarts.append((began, time.monotonic() + 1.0))
        return changed

    def interference(self, since):
        """Why a scenario since ``since`` may have failed, beyond Nova.

        The libvirtd may be shared: another user restarting it breaks
        what was in flight. None when libvirtd stayed up (or only the main
        job restarted it).
        """
        foreign = [(start, end) for start, end
                   in self.watcher.outages_since(since)
                   if not any(own_start <= start <= own_end
                              for own_start, own_end in self._own_restarts)]
        if not foreign:
            return None
        spells = ['%.1f s' % (end - start) if end is not None
                  else 'still down' for start, end in foreign]
        return ('libvirtd was unreachable during this scenario, not '
                'stopped by the main job: %s' % ', '.join(spells))


def pid_of(name):
    for path in ('/run/%s.pid' % name, '/run/libvirt/%s.pid' % name):
        try:
            with open(path) as f:
                pid = int(f.read().strip() or 0)
            with open('/proc/%d/comm' % pid) as f:
                if f.read().strip() == name:
                    return pid
        except (OSError, ValueError):
            continue
    for comm in glob.glob('/proc/[0-9]*/comm'):
        try:
            with open(comm) as f:
                if f.read().strip() == name:
                    return int(comm.split('/')[2])
        except OSError:
            continue
    return None


def wait_for_libvirtd(uri, timeout):
    """Wait (bounded) until ``uri`` answers; raise if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt.open(uri).close()
            return
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def stop_libvirtd(timeout=2):
    """SIGTERM libvirtd and wait for it to exit (SIGKILL after timeout)."""
    pid = pid_of('libvirtd')
    if pid is None:
        raise scenarios.ScenarioFailed('no libvirtd process to stop')
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while os.path.exists('/proc/%d' % pid):
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(POLL)


def start_libvirtd():
    """tools/libvirt-setup.sh: starts libvirtd and waits until it answers."""
    if not os.path.isfile(SETUP_SCRIPT):
        raise scenarios.ScenarioFailed('%s not found' % SETUP_SCRIPT)
    done = subprocess.run([SETUP_SCRIPT], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=180)
    if done.returncode != 0:
        raise scenarios.ScenarioFailed(
            'tools/libvirt-setup.sh failed: %s'
            % done.stdout.strip().splitlines()[-1:])
