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

import time

from nova.compute import power_state
from nova import exception
from oslo_log import log as logging

from nova_lifecycle.eventpath import libvirt_events

LOG = logging.getLogger(__name__)

# Re-read the domain this often while waiting, in case its event is lost.
RECHECK_INTERVAL = 1.0

_OFF = (power_state.SHUTDOWN, power_state.CRASHED)


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


def clean_shutdown(host, event_path, instance, timeout, retry_interval,
                   clock=time.monotonic):
    """Ask the guest to shut down; True once its domain is off in time.

    :param host: the driver's libvirt Host.
    :param event_path: the driver's
        :class:`~nova_lifecycle.eventpath.path.EventPath`, which wakes the
        wait at the domain's STOPPED event.
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
    with event_path.stop_waiter(instance.uuid) as waiter:
        return _shutdown_and_wait(host, guest, instance, waiter, timeout,
                                  retry_interval, deadline, clock)


def _shutdown_and_wait(host, guest, instance, waiter, timeout,
                       retry_interval, deadline, clock):
    started = clock()
    requests = 0
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
