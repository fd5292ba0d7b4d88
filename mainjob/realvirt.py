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
import time
import uuid

import fixtures
import libvirt
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers
from nova.virt.libvirt import host as nova_host
import psutil

from mainjob import deployment
from mainjob import domains
from mainjob import environment
from nova_lifecycle.tests import testguest
from nova_lifecycle.virt import host as lifecycle_host

# Shared with the services mode (mainjob.domains), under their old names.
DomainWatcher = domains.DomainWatcher
POLL = domains.POLL
READY_WAIT = domains.READY_WAIT
WATCH_THREAD = domains.WATCH_THREAD
wait_for_libvirtd = domains.wait_for_libvirtd
stop_libvirtd = domains.stop_libvirtd
start_libvirtd = domains.start_libvirtd

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


def problem(uri, guest_dir):
    """Why the main job cannot run on ``uri``, or None."""
    if os.geteuid() != 0:
        return ('must run as root (Nova\'s privileged helpers run in the '
                'process; QEMU runs as root)')
    if shutil.which('qemu-img') is None:
        return 'qemu-img not found (Debian package qemu-utils)'
    libvirt.registerErrorHandler(domains.quiet, None)
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


class RealHypervisor(domains.GuestSide):
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
