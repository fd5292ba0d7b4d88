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

"""The plugin's event handler inside the Host that upstream's driver built.

Upstream's ``LibvirtDriver.__init__`` builds its ``Host`` through the name
``nova.virt.libvirt.host.Host``; the plugin keeps that object, so whatever
patches or mocks that name, or the Host's methods, reaches the plugin as
it reaches upstream. :func:`adopt` changes three things on that one
object, each a seam upstream's own Host uses:

- ``_event_handler``: upstream picks one per concurrency mode
  (``LibvirtEventHandler.create``); the plugin's :class:`LifecycleEventHandler`
  hands every item from libvirt's callbacks to the plugin's sink and runs
  libvirt's loop on a named thread that stops;
- ``_event_lifecycle_callback``: the libvirt callback that
  ``_get_new_connection`` registers; the plugin's keeps libvirt's detail;
- ``_conn_event_thread``: what ``_init_events`` spawns to run
  connection events; the plugin's ends when the handler stops.

Upstream's ``Host._init_events`` still starts it all (and Nova's tests,
which mock that method to keep event threads out of unit tests, keep the
plugin's out too). Connections, capabilities and the rest stay upstream's.
"""

import functools

from oslo_log import log as logging

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import loop as libvirt_loop

LOG = logging.getLogger(__name__)


def _retire(handler):
    """Close what upstream's unused eventlet handler opened (a pipe)."""
    for name in ('_event_notify_send', '_event_notify_recv'):
        pipe = getattr(handler, name, None)
        if pipe is not None:
            pipe.close()


def lifecycle_callback(conn, dom, event, detail, opaque):
    """libvirt's lifecycle callback, on libvirt's native thread.

    Same arguments as upstream's ``Host._event_lifecycle_callback``; the
    event keeps libvirt's numbers. Only libvirt calls and the handler's
    queue are allowed here: no logging.
    """
    lifecycle_event = libvirt_events.translate(dom, event, detail)
    if lifecycle_event is not None:
        opaque._event_handler._queue_event(lifecycle_event)


class LifecycleEventHandler:
    """Upstream's ``LibvirtEventHandler`` role, for the plugin.

    ``_queue_event`` (libvirt's native thread) passes every item to
    ``sink``, which must not block. ``start`` (called by upstream's
    ``Host._init_events``) starts libvirt's loop on a named thread;
    ``stop`` ends it and the Host's connection-event loop.
    """

    def __init__(self, host, sink):
        self._host = host
        self._sink = sink
        self._loop = libvirt_loop.LibvirtEventLoop()
        self._conn_stopping = False

    def start(self):
        self._conn_stopping = False
        self._loop.register()
        self._loop.start()

    def _queue_event(self, item):
        self._sink(item)

    def run_conn_events(self):
        """The Host's connection-event loop, until :meth:`stop`.

        Upstream's runs forever; ``_init_events`` spawns this one instead.
        """
        while not self._conn_stopping:
            self._host._dispatch_conn_event()

    def queue_connection_closed(self, notice):
        """libvirt's connection-closed notice, for the Host to handle.

        ``Host._connection_closed`` takes the connection lock, which a slow
        reconnect may hold, so it runs on the connection-event loop.
        """
        reason = 'Connection to libvirt lost: %s' % notice['reason']
        self._host._conn_event_handler_queue.put(functools.partial(
            self._host._connection_closed, notice['conn'], False, reason))

    def stop(self, timeout=10):
        """End libvirt's loop thread and the connection-event loop."""
        if not self._loop.stop(timeout):
            LOG.warning('libvirt event loop thread did not stop within %ss',
                        timeout)
        if not self._conn_stopping:
            self._conn_stopping = True
            self._host._conn_event_handler_queue.put(lambda: None)

    def threads_alive(self):
        """Names of the handler's threads still running."""
        return [libvirt_loop.THREAD_NAME] if self._loop.is_alive() else []

    @property
    def loop(self):
        """The handler's :class:`~libvirt_loop.LibvirtEventLoop`."""
        return self._loop


def adopt(host, sink):
    """Give ``host`` (upstream's Host) the plugin's event handling.

    :returns: the :class:`LifecycleEventHandler` now in ``host``.
    """
    _retire(host._event_handler)
    handler = LifecycleEventHandler(host, sink)
    host._event_handler = handler
    host._event_lifecycle_callback = lifecycle_callback
    host._conn_event_thread = handler.run_conn_events
    return handler
