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

"""The main job on a real libvirtd and QEMU (TCG), booting the test guest.

Nova's functional harness is made to run against real libvirt: the
compute's ``[libvirt] connection_uri`` is the real one (``virt_type =
qemu``), the harness's guards that fail a test touching the host (``/sys``,
``os.uname``, the libvirt import, privsep's helper) are lifted (privsep
runs in-process: this runs as root), and the image service (Nova's
GlanceFixture) holds the test guest of ``tools/build-test-guest.sh``: a
kernel and an initramfs image, and one machine image per guest behaviour
whose ``kernel_id``, ``ramdisk_id`` and ``os_command_line`` properties make
Nova boot it directly (its root disk is 1 MiB of zeros the guest never
reads). Servers boot with ``networks: none``.

Hypervisor change times: a watcher (:class:`DomainWatcher`) reads the
state of the main job's domains every :data:`POLL` seconds on a connection
of its own and keeps the first time it saw each new state; a domain whose
ID changed between two reads was stopped and started again in between.
During the libvirtd restart nothing can be read: the change time there is
when the guest's "powering off" line appeared on its serial console.

Only the main job's domains (by UUID) are touched; libvirtd is left
running, except in the restart scenario, which stops it (SIGTERM) and
starts it again with ``tools/libvirt-setup.sh``.
"""

import builtins
import functools
import glob
import io
import os
import shutil
import signal
import subprocess
import time
import uuid

import fixtures
import libvirt
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers
from nova.virt.libvirt import host as nova_host
import psutil

from mainjob import deployment
from mainjob import environment
from mainjob import scenarios
from nova_lifecycle import concurrency
from nova_lifecycle.tests import testguest
from nova_lifecycle.virt import host as lifecycle_host

SETUP_SCRIPT = testguest.LIBVIRT_SETUP_SCRIPT

# What the test guest's /init prints on its serial console.
READY = 'nova-lifecycle-guest: ready'
POWERING_OFF = 'nova-lifecycle-guest: powering off'

# Seconds between two reads of the domains' states.
POLL = 0.02
# Seconds a real guest may take from ACTIVE to its ready line (TCG, a busy
# 2-core machine).
READY_WAIT = 90.0
WATCH_THREAD = environment.MAINJOB_THREADS + 'domain-watch'
# Seconds the clean-up waits for libvirtd if it is restarting.
CLEANUP_WAIT = 60.0

# The host functions Nova's harness poisons, as they are.
_UNPOISONED = {
    'os.uname': os.uname,
    'os.path.isdir': os.path.isdir,
    'os.listdir': os.listdir,
    'builtins.open': builtins.open,
    'glob.iglob': glob.iglob,
    'glob.glob': glob.glob,
    'psutil.net_if_addrs': psutil.net_if_addrs,
}

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


def _quiet(ctx, error):
    """libvirt-python prints every error to stderr by default."""


def problem(uri, guest_dir):
    """Why the main job cannot run on ``uri``, or None."""
    if os.geteuid() != 0:
        return ('must run as root (Nova\'s privileged helpers run in the '
                'process; QEMU runs as root)')
    if shutil.which('qemu-img') is None:
        return 'qemu-img not found (Debian package qemu-utils)'
    libvirt.registerErrorHandler(_quiet, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return ('libvirtd not usable at %s (run tools/libvirt-setup.sh as '
                'root): %s' % (uri, exc))
    try:
        if conn.getType() != 'QEMU':
            return '%s is a %s connection, not QEMU' % (uri, conn.getType())
    finally:
        conn.close()
    return testguest.problem(guest_dir)


class OwnDomainsOnly(fixtures.Fixture):
    """The compute sees only the domains named with its own template.

    The libvirtd may be shared (CI runs other tests on it, some starting
    hundreds of domains): Nova would refuse to start a new compute on a
    hypervisor that already has domains, count the others' in its
    resources, and both drivers would handle their lifecycle events. Each
    deployment names its domains with a prefix of its own
    (``instance_name_template``); Nova's Host lists only those, and the
    lifecycle callbacks of upstream's Host and of the plugin's drop the
    others' events before anything sees them, as if the hypervisor had
    only this compute's domains.
    """

    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def _setUp(self):
        list_domains = nova_host.Host.list_instance_domains
        prefix = self.prefix

        @functools.wraps(list_domains)
        def own_domains(host, only_running=True):
            return [dom for dom in list_domains(host, only_running)
                    if dom.name().startswith(prefix)]

        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.host.Host.list_instance_domains',
            own_domains))
        # Upstream's callback is the Host's; the plugin's Host gets the
        # module's lifecycle_callback when the driver is built.
        for callback, name in (
                (nova_host.Host._event_lifecycle_callback,
                 'nova.virt.libvirt.host.Host._event_lifecycle_callback'),
                (lifecycle_host.lifecycle_callback,
                 'nova_lifecycle.virt.host.lifecycle_callback')):
            self.useFixture(fixtures.MonkeyPatch(
                name, self._own_events(callback)))

    def _own_events(self, callback):
        prefix = self.prefix

        @functools.wraps(callback)
        def own_events(conn, dom, event, detail, opaque):
            # On libvirt's loop thread: no logging, nothing that blocks
            # (a domain's name is known locally).
            try:
                ours = dom.name().startswith(prefix)
            except libvirt.libvirtError:
                ours = False
            if ours:
                callback(conn, dom, event, detail, opaque)

        return own_events


def deployment_factory(uri, guest_dir):
    """What the runner calls with (driver, body, log_path)."""
    return functools.partial(RealDeployment, uri=uri, guest_dir=guest_dir)


class DomainWatcher:
    """Reads the watched domains' states every :data:`POLL` seconds.

    Runs on a native thread (:data:`WATCH_THREAD`) with its own libvirt
    connection, opened again whenever it breaks (libvirtd restarted); it
    keeps, per UUID, the times the state changed.
    """

    def __init__(self, uri):
        native = concurrency.native_threading()
        # A domain that is gone is an answer here, not an error to print.
        libvirt.registerErrorHandler(_quiet, None)
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


class RealHypervisor:
    """``env.hv`` on a real libvirtd with the test guest."""

    kind = 'real'
    # Seconds the API may take to show a power-off during a libvirtd
    # restart: the restart itself takes a few seconds, the plugin retries
    # after 1, 2, 4... s; upstream only notices at its next power-state
    # sync (periodic, every sync_power_state_interval).
    restart_wait = 30.0
    # Each scenario's servers are deleted once it ended (and its held
    # events were handled): idle TCG guests cost CPU, and the host has
    # only 8 VCPUs to give (2 cores, cpu_allocation_ratio 4).
    delete_servers = True

    def __init__(self, case, uri, guest_dir, instances_path):
        self._case = case
        self.uri = uri
        self.guest_dir = guest_dir
        self.instances_path = instances_path
        self._images = {}
        self._guests = {}
        self._own_restarts = []   # (start, end) of the main job's restarts
        self.watcher = DomainWatcher(uri)
        kernel, initrd = testguest.files(guest_dir)
        self._kernel_id = self._add_image(
            'nova-lifecycle-guest-kernel', 'aki', kernel)
        self._ramdisk_id = self._add_image(
            'nova-lifecycle-guest-initrd', 'ari', initrd)

    def _add_image(self, name, disk_format, path=None, data=b'',
                   properties=None):
        if path is not None:
            with open(path, 'rb') as f:
                data = f.read()
        meta = {'name': name, 'disk_format': disk_format,
                'container_format': (disk_format if disk_format in
                                     ('aki', 'ari') else 'bare'),
                'size': len(data), 'min_ram': 0, 'min_disk': 0,
                'visibility': 'public', 'properties': properties or {}}
        return self._case.glance.create(None, meta, io.BytesIO(data))['id']

    @staticmethod
    def command_line(guest):
        words = ['console=ttyS0', 'quiet', 'panic=0',
                 'lc.acpi=%s' % guest.acpi]
        if guest.poweroff_after is not None:
            words.append('lc.poweroff_after=%d' % guest.poweroff_after)
        return ' '.join(words)

    def image_for(self, guest):
        """The machine image that boots this guest (made once)."""
        if guest not in self._images:
            self._images[guest] = self._add_image(
                'nova-lifecycle-guest %s' % self.command_line(guest), 'raw',
                data=b'\0' * (1 << 20),
                properties={'kernel_id': self._kernel_id,
                            'ramdisk_id': self._ramdisk_id,
                            'os_command_line': self.command_line(guest)})
        return self._images[guest]

    def register(self, server, guest):
        self._guests[server['id']] = guest
        self.watcher.watch(server['id'])

    # The guest's serial console

    def console(self, server):
        path = os.path.join(self.instances_path, server['id'],
                            'console.log')
        try:
            with open(path, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

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

    def cleanup(self):
        """Destroy and undefine the main job's domains; stop the watcher."""
        problems = []
        if not self.watcher.stop():
            problems.append('%s did not stop' % WATCH_THREAD)
        if self.watcher.errors:
            problems.append('the domain watcher failed: %r'
                            % self.watcher.errors[:3])
        # libvirtd may be restarting (CI runs other tests on it): retry.
        deadline = time.monotonic() + CLEANUP_WAIT
        while True:
            try:
                conn = libvirt.open(self.uri)
                break
            except libvirt.libvirtError as exc:
                if time.monotonic() >= deadline:
                    return problems + [
                        'cannot remove the main job\'s domains (%s): %s'
                        % (', '.join(self._guests), exc)]
                time.sleep(1)
        try:
            for server_id in self._guests:
                try:
                    dom = conn.lookupByUUIDString(server_id)
                except libvirt.libvirtError:
                    continue
                try:
                    if dom.isActive():
                        dom.destroy()
                    dom.undefineFlags(
                        libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                        libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                except libvirt.libvirtError as exc:
                    problems.append('cannot remove domain %s: %s'
                                    % (server_id, exc))
        finally:
            conn.close()
        return problems


def _pid_of(name):
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
    pid = _pid_of('libvirtd')
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


class RealDeployment(deployment.DeploymentMixin,
                     integrated_helpers._IntegratedTestBase):
    """Nova with one compute on a real libvirtd (QEMU, TCG)."""

    def __init__(self, driver, body, log_path=None, uri=None,
                 guest_dir=None):
        super().__init__(driver, body, log_path)
        self._uri = uri
        self._guest_dir = guest_dir

    def _set_up_hypervisor(self):
        for name, original in _UNPOISONED.items():
            self.useFixture(fixtures.MonkeyPatch(name, original))
        self.useFixture(nova_fixtures.PrivsepFixture())
        instances_path = self.useFixture(fixtures.TempDir()).path
        self.flags(instances_path=instances_path)
        self.flags(virt_type='qemu', connection_uri=self._uri,
                   group='libvirt')
        self.flags(enabled=False, group='vnc')
        prefix = 'nlc-mainjob-%s-' % uuid.uuid4().hex[:8]
        self.flags(instance_name_template=prefix + '%08x')
        self.useFixture(OwnDomainsOnly(prefix))
        hv = RealHypervisor(self, self._uri, self._guest_dir,
                            instances_path)
        return hv

    def _start_compute_service(self):
        # nova-compute refuses to start without libvirtd; a shared one may
        # be restarting.
        wait_for_libvirtd(self._uri, CLEANUP_WAIT)
        return self._start_compute(environment.HOSTNAME)
