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

"""Every domain's power state from one libvirt call.

Upstream's periodic power-state sync asks libvirt about each instance in
turn (one ``get_info`` per instance). ``getAllDomainStats`` with only the
state group returns every domain's state in a single call, so a sync costs
the same number of libvirt calls at 10 instances as at 1,000.
"""

import time

from nova.compute import power_state
from nova.virt.libvirt import guest as libvirt_guest

from nova_lifecycle.eventpath import libvirt_events

# libvirt's VIR_DOMAIN_STATS_STATE: the "state" group of domain stats.
STATS_STATE = 1


class PowerStateSnapshot:
    """Nova power states by instance UUID, as libvirt saw them at one time.

    A hint, not the truth: whoever acts on a difference from the database
    reads that one domain again first.
    """

    def __init__(self, states, taken_at=None, duration=None):
        self.states = states
        self.taken_at = time.monotonic() if taken_at is None else taken_at
        # Seconds the bulk query took, when measured.
        self.duration = duration

    def __len__(self):
        return len(self.states)

    def age(self):
        return time.monotonic() - self.taken_at

    def power_state(self, uuid):
        """Nova's power state for ``uuid``; NOSTATE without a domain."""
        return self.states.get(uuid, power_state.NOSTATE)


def _nova_state(libvirt_state):
    return libvirt_guest.LIBVIRT_POWER_STATE.get(libvirt_state,
                                                 power_state.NOSTATE)


def take(conn):
    """One ``getAllDomainStats`` call over every domain, running or not.

    Falls back to listing the domains and asking each one (what upstream
    costs) where the connection lacks the call (old libvirt, Nova's fake).
    """
    started = time.monotonic()
    taken = _take(conn)
    taken.duration = time.monotonic() - started
    return taken


def _take(conn):
    libvirt = libvirt_events.libvirt_module()
    get_all_stats = getattr(conn, 'getAllDomainStats', None)
    if get_all_stats is not None:
        try:
            records = get_all_stats(STATS_STATE, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                raise
        else:
            return PowerStateSnapshot({
                dom.UUIDString(): _nova_state(stats.get('state.state'))
                for dom, stats in records})
    flags = (libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE |
             libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
    domains = conn.listAllDomains(flags)
    return PowerStateSnapshot({dom.UUIDString(): _nova_state(dom.info()[0])
                               for dom in domains})
