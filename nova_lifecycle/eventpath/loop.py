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

"""libvirt's default event loop on a native thread that can be stopped.

libvirt delivers domain events and keepalives only while
``virEventRunDefaultImpl`` is being called. Upstream Nova runs it forever
on an unnamed daemon thread; here it has a name, an owner and a ``stop``
that wakes the loop with a zero-delay libvirt timer.

The loop thread must never log or touch green primitives (under eventlet
it is outside the hub), so errors are counted, kept for :meth:`status`, and
handed to the owner's ``on_failure``, which must pass them on to a thread
that may log.
"""

from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events

THREAD_NAME = 'lifecycle-libvirt-loop'

# After this many failures in a row the loop pauses between iterations so a
# broken libvirt cannot spin a core.
_FAILURES_BEFORE_BACKOFF = 10
_BACKOFF_SECONDS = 0.5


class LibvirtEventLoop:
    """Owns the native thread that runs libvirt's default event loop."""

    def __init__(self, name=THREAD_NAME, on_failure=None):
        self._name = name
        self._on_failure = on_failure
        self._thread = None
        self._stopping = False
        self._failures = 0
        self._last_error = None
        self._last_turn = None

    def status(self):
        """The loop as plain data: running, failures, last error, idle.

        ``seconds since last turn``: since an iteration of libvirt's loop
        last returned (None before the first); it grows while libvirt has
        nothing to say, and without bound if the loop is stuck.
        """
        last = self._last_turn
        native_time = concurrency.native_time()
        return {
            'running': self.is_alive(),
            'failures': self._failures,
            'last error': (None if self._last_error is None
                           else str(self._last_error)),
            'seconds since last turn': (
                None if last is None else native_time.monotonic() - last),
        }

    def register(self):
        """Register libvirt's default loop; must precede any connection."""
        libvirt_events.libvirt_module().virEventRegisterDefaultImpl()

    def start(self):
        if self._thread is not None:
            return
        self._stopping = False
        native = concurrency.native_threading()
        self._thread = native.Thread(target=self._run, name=self._name,
                                     daemon=True)
        self._thread.start()

    def is_alive(self):
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout=10):
        """Ask the loop to end and wait for it; True once it has ended."""
        thread = self._thread
        if thread is None:
            return True
        self._stopping = True
        self._wake()
        thread.join(timeout)
        if thread.is_alive():
            return False
        self._thread = None
        return True

    def nudge(self):
        """Make the loop turn once soon (a zero-delay libvirt timer).

        A liveness probe: a loop that does not turn after it is stuck.
        """
        if self.is_alive():
            self._wake()

    def _wake(self):
        libvirt = libvirt_events.libvirt_module()
        add_timeout = getattr(libvirt, 'virEventAddTimeout', None)
        if add_timeout is None:
            # Nova's fake libvirt: its loop iteration ends by itself.
            return
        try:
            add_timeout(0, _remove_timer, None)
        except Exception as exc:
            self._last_error = exc

    def _run(self):
        libvirt = libvirt_events.libvirt_module()
        native_time = concurrency.native_time()
        consecutive = 0
        while not self._stopping:
            try:
                libvirt.virEventRunDefaultImpl()
                consecutive = 0
            except Exception as exc:
                self._failures += 1
                self._last_error = exc
                consecutive += 1
                if self._on_failure is not None:
                    self._on_failure(exc, consecutive)
                if consecutive >= _FAILURES_BEFORE_BACKOFF:
                    native_time.sleep(_BACKOFF_SECONDS)
            self._last_turn = native_time.monotonic()


def _remove_timer(timer, opaque):
    """A one-shot libvirt timer: it only serves to wake the loop."""
    libvirt_events.libvirt_module().virEventRemoveTimeout(timer)
