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
  runs libvirt's loop on a named thread that stops, gives instance events
  to the event path and connection notices to the Host's own
  connection-event thread, as upstream's handlers do;
- ``_event_lifecycle_callback``: the libvirt callback that
  ``_get_new_connection`` registers; the plugin's keeps libvirt's detail;
- ``_conn_event_thread``: what ``_init_events`` spawns to run
  connection events; the plugin's ends when the handler stops.

Upstream's ``Host._init_events`` still starts it all (and Nova's tests,
which mock that method to keep event threads out of unit tests, keep the
plugin's out too). Connections, capabilities and the rest stay upstream's.

Nova 31 and 32's Host has no ``_event_handler``: it runs libvirt's events
itself, under eventlet only. :func:`adopt` then fills the same roles
through that Host's own seams (see :func:`_adopt_legacy`).
"""

import functools

from nova.virt import event as virtevent
from nova.virt.libvirt import host as nova_host
from oslo_log import log as logging

from nova_lifecycle.common import inbox
from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import loop as libvirt_loop

LOG = logging.getLogger(__name__)

NOTICES_THREAD_NAME = 'lifecycle-libvirt-notices'
# A failing libvirt loop is reported at its first failure in a row, then
# once every this many.
REPORT_LOOP_FAILURES_EVERY = 100

# Nova 33 moved libvirt's event threads from the Host into a
# LibvirtEventHandler per concurrency mode, and with it nova-compute could
# run native threads; nova 31 and 32 have neither.
HOST_HAS_EVENT_HANDLER = hasattr(nova_host, 'LibvirtEventHandler')


def _retire(handler):
    """Close what upstream's unused eventlet handler opened (a pipe)."""
    for name in ('_event_notify_send', '_event_notify_recv'):
        pipe = getattr(handler, name, None)
        if pipe is not None:
            pipe.close()


def lifecycle_callback(conn, dom, event, detail, opaque):
    """libvirt's lifecycle callback, on libvirt's native thread.

    Same arguments as upstream's ``Host._event_lifecycle_callback``
    (``opaque`` is the Host). Only libvirt calls and the handler's queue
    are allowed here: no logging.
    """
    handler = opaque._event_handler
    lifecycle_event = handler.translator.translate(dom, event, detail)
    if lifecycle_event is not None:
        handler._queue_event(lifecycle_event)


class LifecycleEventHandler:
    """Upstream's ``LibvirtEventHandler`` role, for the plugin.

    ``_queue_event`` (libvirt's native thread, never blocking) gives
    instance events to ``event_path.queue`` and connection-closed notices
    to the Host's connection-event thread (through a native-to-green
    inbox under eventlet, as upstream's eventlet handler does). ``start``
    (called by upstream's ``Host._init_events``) starts libvirt's loop on
    a named thread; ``stop`` ends it, the notices' inbox and the Host's
    connection-event loop.
    """

    def __init__(self, host, event_path):
        self._host = host
        self._event_path = event_path
        self.translator = libvirt_events.EventTranslator()
        self._loop = libvirt_loop.LibvirtEventLoop(
            on_failure=self._loop_failed)
        # Runs what it is given on the Host's connection-event thread.
        self._notices = inbox.make_inbox(
            host._conn_event_handler_queue.put, NOTICES_THREAD_NAME,
            green=not concurrency.threading_mode())
        self._conn_stopping = False
        self._connections_lost = 0

    def start(self, register=True):
        """Start the notices and libvirt's loop thread.

        ``register``: register libvirt's default loop first; nova 31 and
        32's ``Host.initialize`` has already done it.
        """
        self._conn_stopping = False
        self._notices.start()
        if register:
            self._loop.register()
        self._loop.start()

    def _queue_event(self, item):
        if isinstance(item, virtevent.InstanceEvent):
            self._event_path.queue(item)
        elif isinstance(item, dict) and 'conn' in item and 'reason' in item:
            self._connections_lost += 1
            self._to_host(functools.partial(
                self._host._connection_closed, item['conn'], False,
                'Connection to libvirt lost: %s' % item['reason']))
        else:
            self._to_host(functools.partial(
                LOG.warning, 'Ignoring unexpected libvirt notice %r', item))

    def _to_host(self, call):
        """Run ``call`` on the Host's connection-event thread.

        ``Host._connection_closed`` takes the connection lock, which a slow
        reconnect may hold, so it never runs on libvirt's loop thread.
        """
        try:
            self._notices.put(call)
        except RuntimeError:
            pass  # Stopped: the Host's connection-event loop is gone too.

    def _loop_failed(self, error, consecutive):
        if consecutive == 1 or consecutive % REPORT_LOOP_FAILURES_EVERY == 0:
            self._to_host(functools.partial(
                LOG.warning, 'libvirt event loop failed (%d time(s) in a '
                'row); events may be late until it recovers: %s',
                consecutive, error))

    def run_conn_events(self):
        """The Host's connection-event loop, until :meth:`stop`.

        Upstream's runs forever; ``_init_events`` spawns this one instead.
        """
        while not self._conn_stopping:
            self._host._dispatch_conn_event()

    def stop(self, timeout=10):
        """End libvirt's loop thread, the notices and the Host's loop."""
        if not self._loop.stop(timeout):
            LOG.warning('libvirt event loop thread did not stop within %ss',
                        timeout)
        self._notices.stop(timeout)
        if not self._conn_stopping:
            self._conn_stopping = True
            self._host._conn_event_handler_queue.put(lambda: None)

    def status(self):
        """libvirt's loop and connection as plain data.

        ``LibvirtEventLoop.status`` plus ``connections lost``: how many
        connection-closed notices libvirt sent.
        """
        status = self._loop.status()
        status['connections lost'] = self._connections_lost
        return status

    def nudge(self):
        """Make libvirt's loop turn once soon (see ``LibvirtEventLoop``)."""
        self._loop.nudge()

    def threads_alive(self):
        """Names of the handler's threads still running."""
        alive = []
        if self._loop.is_alive():
            alive.append(libvirt_loop.THREAD_NAME)
        if self._notices.is_alive():
            alive.append(NOTICES_THREAD_NAME)
        return alive


def adopt(host, event_path):
    """Give ``host`` (upstream's Host) the plugin's event handling.

    :returns: the :class:`LifecycleEventHandler` now in ``host``.
    """
    _retire(getattr(host, '_event_handler', None))
    handler = LifecycleEventHandler(host, event_path)
    host._event_handler = handler
    host._event_lifecycle_callback = lifecycle_callback
    host._conn_event_thread = handler.run_conn_events
    if not HOST_HAS_EVENT_HANDLER:
        _adopt_legacy(host, handler)
    return handler


def _adopt_legacy(host, handler):
    """The handler's roles in nova 31 and 32's Host.

    That Host's ``initialize`` registers libvirt's default loop and calls
    ``_init_events``, which makes a pipe (``_init_events_pipe``), starts
    ``_native_thread`` on an OS thread and spawns ``_dispatch_thread``
    and ``_conn_event_thread``; libvirt's close and device callbacks call
    ``_queue_event``. Here the pipe's step starts the handler instead,
    upstream's two event threads have nothing to run, ``_queue_event`` is
    the handler's, and the handler's ``_connection_closed`` is given the
    release's own rule (:func:`_legacy_connection_closed`).
    """
    host._init_events_pipe = functools.partial(_start_registered, handler)
    host._native_thread = _nothing_to_run
    host._dispatch_thread = _nothing_to_run
    host._queue_event = handler._queue_event
    host._connection_closed = functools.partial(_legacy_connection_closed,
                                                host)


def _start_registered(handler):
    """Start the handler; libvirt's loop is registered already."""
    handler.start(register=False)


def _nothing_to_run():
    """Upstream's event thread on nova 31/32: the handler does its work."""


def _legacy_connection_closed(host, conn, *args, **kwargs):
    """Nova 31/32: a closed connection still in use is dropped, and said.

    As those releases' ``Host._dispatch_events`` does: only a close of the
    Host's current connection queues a connection event (a reconnect may
    already have replaced it).
    """
    with host._wrapped_conn_lock:
        if conn != host._wrapped_conn:
            return
        host._wrapped_conn = None
        host._queue_conn_event_handler(*args, **kwargs)


def check_concurrency_mode():
    """One warning when nova-compute runs native threads before nova 33.

    :returns: False when the release cannot run the mode in use.
    """
    if HOST_HAS_EVENT_HANDLER or not concurrency.threading_mode():
        return True
    LOG.warning('Nova %s runs nova-compute under eventlet only: native '
                'threading (OS_NOVA_DISABLE_EVENTLET_PATCHING=true) is not '
                'available on this release, for Nova\'s libvirt driver as '
                'for nova-lifecycle; unset it.',
                concurrency.nova_version())
    return False
