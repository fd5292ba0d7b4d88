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

"""Upstream's libvirt event threads in Nova's harness, with an end.

Nova's functional harness disables the libvirt driver's event threads
(``Host._init_events``), so that upstream's driver would never hear a
lifecycle event. The main job puts Nova's own method back for upstream's
run; its threads loop forever, so these versions of the loops check a flag
between iterations, and :class:`UpstreamEventThreads` ends them once the
compute stopped, for the harness's executors to shut down.
"""

import fixtures
from nova.virt.libvirt import host as nova_host

# Nova's own method, taken before the harness mocks it.
_REAL_INIT_EVENTS = nova_host.Host._init_events


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
        if hasattr(nova_host, 'LibvirtEventHandler'):
            loops = (
                ('_ThreadingLibvirtEventHandler._native_thread',
                 _native_loop),
                ('_EventletLibvirtEventHandler._native_thread', _native_loop),
                ('_EventletLibvirtEventHandler._dispatch_thread',
                 _dispatch_loop))
        else:
            # Nova 31 and 32: the Host runs the loops itself.
            loops = (('Host._native_thread', _native_loop),
                     ('Host._dispatch_thread', _dispatch_loop))
        for name, loop in loops + (('Host._conn_event_thread', _conn_loop),):
            self.useFixture(fixtures.MonkeyPatch(prefix + name, loop))

    def _stop_all(self):
        for host in self.hosts:
            if not getattr(host, '_mainjob_stop', False):
                self.stop(host)

    @staticmethod
    def stop(host, timeout=10):
        """End ``host``'s event threads; True when the loop thread ended."""
        # Nova 31 and 32 have no handler: the Host holds its loops.
        handler = getattr(host, '_event_handler', host)
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
