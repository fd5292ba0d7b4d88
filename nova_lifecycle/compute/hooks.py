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

"""How the plugin reaches the compute manager without editing Nova.

nova-compute builds its driver from ``compute_driver`` and, in
``init_host``, registers ``ComputeManager.handle_events`` with the
driver's ``register_event_listener``. That bound method carries the
manager (``callback.__self__``): the driver needs no console script of its
own and works under plain ``nova-compute``, devstack included.

On that manager instance (not its class) the plugin replaces
``_query_driver_power_state_and_sync``, the per-instance step of the
periodic ``_sync_power_states``, so the periodic task itself, its interval
and its locking stay Nova's. ``detach`` (when the manager unregisters, at
``cleanup_host``) restores it.
"""

import functools
from oslo_log import log as logging

from nova.compute import manager as compute_manager
from nova import context as nova_context

from nova_lifecycle.compute import sync

LOG = logging.getLogger(__name__)

_HOOKED = '_query_driver_power_state_and_sync'


class ManagerHooks:
    """The plugin's additions to the manager that listens to a driver."""

    def __init__(self, recent_power_states):
        self._recent_power_states = recent_power_states
        self.manager = None

    def attach(self, callback):
        """Hook the manager behind ``callback``; False if there is none."""
        manager = getattr(callback, '__self__', None)
        if not isinstance(manager, compute_manager.ComputeManager):
            return False
        if self.manager is not manager:
            self.detach()
            setattr(manager, _HOOKED, functools.partial(
                sync.query_and_sync, manager, self._recent_power_states))
            self.manager = manager
            LOG.info('nova-lifecycle hooked the power-state sync of compute '
                     'manager for host %s.', manager.host)
        return True

    def detach(self):
        manager, self.manager = self.manager, None
        if manager is not None:
            manager.__dict__.pop(_HOOKED, None)

    def resync(self):
        """Run the manager's power-state sync now, if a manager listens."""
        manager = self.manager
        if manager is None:
            LOG.debug('No compute manager to resync power states with.')
            return False
        LOG.info('Resyncing the power state of every instance of host %s.',
                 manager.host)
        manager._sync_power_states(nova_context.get_admin_context())
        return True
