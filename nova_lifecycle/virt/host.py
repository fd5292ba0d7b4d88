"""Nova's libvirt Host with the plugin's event path and owned threads.

Only event handling changes: libvirt's callbacks feed ``event_sink`` (the
driver's ``queue_event``) instead of upstream's handler, the libvirt event
loop and the connection-event thread have names and stop on ``cleanup``,
and lifecycle callbacks keep libvirt's detail. Connections, capabilities
and the rest stay upstream's.
"""

import functools
import logging
import threading

from nova.virt.libvirt import host as nova_host

from nova_lifecycle.virt import eventloop
from nova_lifecycle.virt import events

LOG = logging.getLogger(__name__)

CONN_THREAD_NAME = 'lifecycle-conn-events'


class _EventSource:
    """Stands in for upstream's event handler inside the Host.

    Upstream's callbacks (device removal, connection close) call
    ``_queue_event`` on libvirt's native thread; everything goes to the
    sink, which must accept items from that thread without blocking.
    """

    def __init__(self, sink):
        self._sink = sink

    def _queue_event(self, item):
        self._sink(item)


def retire_upstream_event_handler(handler):
    """Close what upstream's unused eventlet handler opened (a pipe)."""
    for name in ('_event_notify_send', '_event_notify_recv'):
        pipe = getattr(handler, name, None)
        if pipe is not None:
            pipe.close()


class LifecycleHost(nova_host.Host):

    def __init__(self, uri, read_only=False, conn_event_handler=None,
                 event_sink=None):
        super().__init__(uri, read_only,
                         conn_event_handler=conn_event_handler)
        retire_upstream_event_handler(self._event_handler)
        self._event_handler = _EventSource(event_sink)
        self._event_loop = eventloop.LibvirtEventLoop()
        self._conn_thread = None
        self._conn_stopping = False

    @staticmethod
    def _event_lifecycle_callback(conn, dom, event, detail, opaque):
        """libvirt's lifecycle callback, on libvirt's native thread.

        Only libvirt calls and the sink are allowed here: no logging.
        """
        self = opaque
        lifecycle_event = events.translate(dom, event, detail)
        if lifecycle_event is not None:
            self._event_handler._queue_event(lifecycle_event)

    def queue_connection_closed(self, notice):
        """Handle libvirt's connection-closed notice off libvirt's thread.

        ``_connection_closed`` takes the connection lock, which a slow
        reconnect may hold, so it runs on the connection-event thread.
        """
        reason = 'Connection to libvirt lost: %s' % notice['reason']
        self._conn_event_handler_queue.put(functools.partial(
            self._connection_closed, notice['conn'], False, reason))

    def _init_events(self):
        self._event_loop.register()
        self._event_loop.start()
        self._conn_stopping = False
        self._conn_thread = threading.Thread(
            target=self._run_conn_events, name=CONN_THREAD_NAME, daemon=True)
        self._conn_thread.start()

    def _run_conn_events(self):
        while not self._conn_stopping:
            self._dispatch_conn_event()

    def threads_alive(self):
        """Names of the host's threads still running."""
        alive = []
        if self._event_loop.is_alive():
            alive.append(eventloop.THREAD_NAME)
        thread = self._conn_thread
        if thread is not None and thread.is_alive():
            alive.append(CONN_THREAD_NAME)
        return alive

    def cleanup(self, timeout=10):
        """Stop the libvirt loop and the connection-event thread.

        Not for concurrent calls: the driver serialises them.
        """
        super().cleanup()
        if not self._event_loop.stop(timeout):
            LOG.warning('libvirt event loop thread did not stop within %ss',
                        timeout)
        if self._conn_thread is not None:
            self._conn_stopping = True
            self._conn_event_handler_queue.put(lambda: None)
            self._conn_thread.join(timeout)
            if self._conn_thread.is_alive():
                LOG.warning('%s thread did not stop within %ss',
                            CONN_THREAD_NAME, timeout)
            else:
                self._conn_thread = None
        self._initialized = False
