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

"""How long a STOPPED event is held, and whether it still stands.

Upstream Nova holds every STOPPED for 15 s, because a reboot also sends
one. Here the driver knows when it is itself operating on an instance, and
libvirt's detail says whether the guest shut itself down or crashed: a
STOPPED nothing explains is handed on after a short grace, and every held
STOPPED is checked against the live domain before it is delivered, so a
late, lost or duplicated event cannot stop a running guest.
"""

from oslo_log import log as logging

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import operations

LOG = logging.getLogger(__name__)

# libvirt virDomainState values Nova maps to a power state other than
# SHUTDOWN or CRASHED: RUNNING, BLOCKED, PAUSED, PMSUSPENDED. (SHUTDOWN, a
# domain being shut down, counts as off for Nova, and so here.)
_UP_STATES = {1: 'running', 2: 'blocked', 3: 'paused',
              7: 'suspended by the guest'}


def guest_initiated(event):
    """True when libvirt says the guest stopped by itself or died.

    A crash, a QEMU process that failed, or a shutdown whose SHUTDOWN event
    says GUEST. QEMU reports an ACPI shutdown requested from the host as
    GUEST as well (seen with libvirt 9.0 / QEMU 7.2): Nova's own clean
    shutdowns are driver operations and wait anyway; an operator's
    ``virsh shutdown`` gets the grace, which is right since the guest is
    then off. A destroy (SHUTDOWN_HOST, STOPPED_DESTROYED) is not.
    """
    detail = event.libvirt_detail
    if detail in (libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED,
                  libvirt_events.DOMAIN_EVENT_STOPPED_FAILED):
        return True
    return (detail == libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN and
            event.shutdown_detail ==
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)


class StoppedPolicy:
    """The hold and the re-check for STOPPED events of one driver.

    :param conf: the ``[lifecycle]`` option group.
    :param operations: the driver's :class:`DriverOperations`.
    :param live_state: ``live_state(uuid)`` -> libvirt domain state number,
        None when there is no such domain.
    """

    def __init__(self, conf, operations, live_state):
        self._conf = conf
        self._operations = operations
        self._live_state = live_state

    def hold_for(self, event):
        """Seconds to hold this STOPPED event."""
        conf = self._conf
        if not conf.fast_stopped_events:
            return conf.stopped_event_delay
        busy = self._operations.active(event.uuid)
        if busy:
            LOG.debug('STOPPED event for instance %s arrived during %s; held '
                      'for %ss.', event.uuid, ', '.join(busy),
                      conf.stopped_event_delay)
            return conf.stopped_event_delay
        ended = self._operations.ended(event.uuid)
        if (ended is not None and ended[0] <= conf.stopped_event_delay and
                ended[1] in operations.STOPPING_METHODS):
            # Late news of an operation that stops domains: held as if it
            # had come during it; that is over, so the grace and the
            # re-check.
            LOG.debug('STOPPED event for instance %s arrived %.2fs after '
                      '%s ended; held for %ss.', event.uuid, ended[0],
                      ended[1], self._grace())
            return self._grace()
        if isinstance(event, libvirt_events.DomainLifecycleEvent) and \
                guest_initiated(event):
            return self._grace()
        return conf.stopped_event_delay

    def explained(self, uuid):
        """True when a driver operation explains a STOPPED of ``uuid``."""
        return self.explaining_operation(uuid) is not None

    def explaining_operation(self, uuid):
        """The driver operation that explains a STOPPED of ``uuid``, or None.

        One in progress (one that stops domains first), or one that stops
        domains and ended less than ``stopped_event_delay`` ago.
        """
        busy = self._operations.active(uuid)
        if busy:
            stopping = [name for name in busy
                        if name in operations.STOPPING_METHODS]
            return (stopping or busy)[0]
        ended = self._operations.ended(uuid)
        if (ended is not None and
                ended[0] <= self._conf.stopped_event_delay and
                ended[1] in operations.STOPPING_METHODS):
            return ended[1]
        return None

    def after_operations(self):
        """Seconds a STOPPED is held once the driver's operations end.

        None keeps the event's original deadline.
        """
        if not self._conf.fast_stopped_events:
            return None
        return self._grace()

    def _grace(self):
        # The grace never makes a STOPPED wait longer than the delay.
        return min(self._conf.stopped_event_grace,
                   self._conf.stopped_event_delay)

    def recheck(self, event):
        """A reason not to deliver this STOPPED now, or None."""
        if not self._conf.fast_stopped_events:
            return None
        try:
            state = self._live_state(event.uuid)
        except Exception as exc:
            LOG.warning('Cannot read the state of instance %s before '
                        'delivering its STOPPED event; delivering it: %s',
                        event.uuid, exc)
            return None
        if state in _UP_STATES:
            return 'domain is %s again' % _UP_STATES[state]
        return None
