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

"""Hand items from a native OS thread to the service's own threads.

libvirt's event loop is a native thread. Under native threading it may call
the plugin directly, as long as that never blocks; under eventlet it must
not touch green primitives, so items cross over through a native queue and
a self-pipe that wakes one green thread. Both inboxes have the same
interface: ``put`` from any thread, never blocking; ``start``; ``stop``.
"""

import os

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class DirectInbox:
    """Native threading: the handler runs on the caller's thread.

    The handler must not block; an exception from it is logged and never
    reaches the caller (the libvirt loop must keep running).
    """

    def __init__(self, handler, name):
        self._handler = handler
        self._name = name

    def start(self):
        pass

    def put(self, item):
        try:
            self._handler(item)
        except Exception:
            LOG.exception('%s: handling %r failed', self._name, item)

    def stop(self, timeout=None):
        return True

    def is_alive(self):
        return False


_STOP = object()


class GreenPipeInbox:
    """Eventlet: a native queue plus a self-pipe read by a green thread.

    ``put`` writes at most one byte per wake-up (a flag under a native lock
    says whether the reader is already due to run), so a burst can never
    fill the pipe and block the native thread.
    """

    def __init__(self, handler, name):
        from eventlet import patcher
        self._handler = handler
        self._name = name
        native_queue = patcher.original('queue')
        self._items = native_queue.SimpleQueue()
        self._empty = native_queue.Empty
        self._signal_lock = patcher.original('threading').Lock()
        self._signalled = False
        # Eventlet's os.write yields to the hub first; this one returns at
        # once (at most one byte is ever unread), so it may run under the
        # native lock, on any thread.
        self._write = patcher.original('os').write
        # start() opens the pipe: an inbox never started holds no file
        # descriptor.
        self._write_fd = None
        self._reader = None
        self._thread = None
        self._stopped = False

    def start(self):
        from eventlet import greenio
        import threading  # green under eventlet
        with self._signal_lock:
            if self._stopped or self._thread is not None:
                return
            read_fd, self._write_fd = os.pipe()
            self._reader = greenio.GreenPipe(read_fd, 'rb', 0)
            # What was put before the start is handled now.
            self._signalled = True
            self._write(self._write_fd, b'.')
            self._thread = threading.Thread(
                target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def put(self, item):
        # All under the native lock: once stop() has flagged the inbox
        # nothing more gets in, and no byte goes to a pipe it closed.
        with self._signal_lock:
            if self._stopped:
                raise RuntimeError('%s is stopped' % self._name)
            self._items.put(item)
            if self._signalled or self._write_fd is None:
                return
            self._signalled = True
            self._write(self._write_fd, b'.')

    def stop(self, timeout=None):
        """Let the reader handle what was put so far, then end it.

        What a native thread put while the reader was ending is handled
        here, on the caller's thread; afterwards ``put`` refuses, so an
        item is either handled or refused, never dropped.
        Not for concurrent calls: the owner serialises them.
        """
        if self._stopped:
            return True
        if self._thread is not None:
            self.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                return False
        with self._signal_lock:
            self._stopped = True
        while not self._handle_queued():
            pass
        if self._reader is not None:
            self._reader.close()
            os.close(self._write_fd)
        return True

    def is_alive(self):
        return self._thread is not None and self._thread.is_alive()

    def _run(self):
        while True:
            if not self._reader.read(1):
                return
            with self._signal_lock:
                self._signalled = False
            if not self._handle_queued():
                return

    def _handle_queued(self):
        """Handle the queued items; False on reaching the stop marker."""
        while True:
            try:
                item = self._items.get_nowait()
            except self._empty:
                return True
            if item is _STOP:
                return False
            try:
                self._handler(item)
            except Exception:
                LOG.exception('%s: handling %r failed', self._name, item)


def make_inbox(handler, name, green):
    """The inbox for the mode: ``green`` is True under eventlet."""
    return (GreenPipeInbox if green else DirectInbox)(handler, name)
