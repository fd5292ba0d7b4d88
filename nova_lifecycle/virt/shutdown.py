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

"""Clean guest shutdown: ACPI, retries, a precise deadline, woken by events.

Upstream's ``_clean_shutdown`` sleeps one second at a time and polls the
domain after each sleep, and counts sleeps rather than time, so a guest
that powers off after 300 ms is seen after a full second and slow libvirt
calls stretch the timeout. Here the wait ends when the domain's STOPPED
event arrives (the event path wakes the waiter at once, before any hold),
the state is still re-read every :data:`RECHECK_INTERVAL` so a lost event
costs at most that, and every wait is measured against one monotonic
deadline.
"""

import collections
import threading
import time

from nova.compute import power_state
from nova import exception
from nova.virt import event as virtevent
from oslo_log import log as logging

from nova_lifecycle.eventpath import libvirt_events

LOG = logging.getLogger(__name__)

# Re-read the domain this often while waiting, in case its event is lost.
RECHECK_INTERVAL = 1.0

_OFF = (power_state.SHUTDOWN, power_state.CRASHED)


class StopWaiters:
    """Threads waiting for an instance's domain to stop, by UUID.

    ``notify`` is called from the event path for every STOPPED event; it
    only sets Events, so it never blocks the caller.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._waiters = collections.defaultdict(list)

    def register(self, uuid):
        waiter = threading.Event()
        with self._lock:
            self._waiters[uuid].append(waiter)
        return waiter

    def unregister(self, uuid, waiter):
        with self._lock:
            waiters = self._waiters.get(uuid)
            if waiters is not None:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[uuid]

    def notify(self, event):
        """Wake the waiters of a STOPPED event's instance."""
        if getattr(event, 'transition', None) != \
                virtevent.EVENT_LIFECYCLE_STOPPED:
            return
        with self._lock:
            waiters = list(self._waiters.get(event.uuid, ()))
        for waiter in waiters:
            waiter.set()

    def waiting(self):
        with self._lock:
            return sum(len(w) for w in self._waiters.values())


def _live_state(host, instance):
    """Nova power state of the instance's domain; SHUTDOWN once it is gone."""
    try:
        return host.get_guest(instance).get_power_state(host)
    except exception.InstanceNotFound:
        return power_state.SHUTDOWN


def _request_shutdown(guest, instance, number):
    """Send the guest one ACPI shutdown request; libvirt errors are logged."""
    try:
        guest.shutdown()
    except libvirt_events.libvirt_module().libvirtError as exc:
        LOG.debug('Ignoring libvirt error from shutdown request %d: %s',
                  number, exc, instance=instance)


def clean_shutdown(host, waiters, instance, timeout, retry_interval,
                   clock=time.monotonic):
    """Ask the guest to shut down; True once its domain is off in time.

    :param host: the driver's libvirt Host.
    :param waiters: the driver's :class:`StopWaiters`.
    :param timeout: seconds the guest has, from this call.
    :param retry_interval: seconds between ACPI requests (0: one request).
    """
    deadline = clock() + timeout
    try:
        guest = host.get_guest(instance)
    except exception.InstanceNotFound:
        LOG.debug('No domain to shut down.', instance=instance)
        return True
    state = guest.get_power_state(host)
    if state in _OFF:
        LOG.info('Instance already shutdown.', instance=instance)
        return True
    if timeout <= 0:
        # As upstream: one request, and no wait for it.
        _request_shutdown(guest, instance, 1)
        LOG.info('Instance failed to shutdown in %s seconds (1 request).',
                 timeout, instance=instance)
        return False
    waiter = waiters.register(instance.uuid)
    started = clock()
    requests = 0
    try:
        next_request = started
        while True:
            now = clock()
            if now >= next_request and now < deadline:
                requests += 1
                _request_shutdown(guest, instance, requests)
                next_request = (now + retry_interval if retry_interval > 0
                                else float('inf'))
                now = clock()
            if now >= deadline:
                break
            woken = waiter.wait(min(deadline, next_request,
                                    now + RECHECK_INTERVAL) - now)
            waiter.clear()
            if _live_state(host, instance) in _OFF:
                LOG.info('Instance shutdown successfully after %.2f seconds '
                         '(%d request(s)%s).', clock() - started, requests,
                         ', woken by its event' if woken else '',
                         instance=instance)
                return True
        # A last look: the guest may have made it during the last call.
        if _live_state(host, instance) in _OFF:
            return True
        LOG.info('Instance failed to shutdown in %s seconds (%d request(s)).',
                 timeout, requests, instance=instance)
        return False
    finally:
        waiters.unregister(instance.uuid, waiter)
