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
and its locking stay Nova's, and wraps ``graceful_shutdown`` to learn when
the service starts to stop. ``detach`` (when the manager unregisters, at
``cleanup_host``) restores both.

Nova 31 and 32 have no ``graceful_shutdown`` (nor the 'compute-alt' RPC
server that serves operations in progress while the service stops): their
service stops its RPC server, then calls ``cleanup_host``. There the
plugin learns of the stop only from ``cleanup_host``, and says so once.
"""

import collections
import functools
import threading
import time

from oslo_log import log as logging

from nova.compute import manager as compute_manager
from nova import context as nova_context

from nova_lifecycle.compute import sync
from nova_lifecycle import concurrency

LOG = logging.getLogger(__name__)

_HOOKED = '_query_driver_power_state_and_sync'
_GRACEFUL = 'graceful_shutdown'


def shutdown_began(manager):
    """True once Nova 34's service marked the manager as shutting down.

    Nova 34 sets ``Manager._shutdown_in_progress`` (an Event) when the
    service's stop begins, before the RPC servers stop; nova 33 has no such
    flag (the plugin then learns it from ``graceful_shutdown``).
    """
    flag = getattr(manager, '_shutdown_in_progress', None)
    return bool(flag is not None and flag.is_set())


def has_graceful_shutdown(manager):
    """True when the manager's service calls ``graceful_shutdown`` (nova 33+).

    Looked up on the class, where Nova defines it; the plugin's hook is an
    attribute of the instance.
    """
    return callable(getattr(type(manager), _GRACEFUL, None))


class ManagerHooks:
    """The plugin's additions to the manager that listens to a driver."""

    def __init__(self, recent_power_states):
        self._recent_power_states = recent_power_states
        self._stopping = threading.Event()
        self._outcomes = collections.Counter()
        self._outcomes_lock = threading.Lock()
        self._round = None
        self.manager = None

    def attach(self, callback):
        """Hook the manager behind ``callback``; False if there is none."""
        manager = getattr(callback, '__self__', None)
        if not isinstance(manager, compute_manager.ComputeManager):
            return False
        if self.manager is not manager:
            self.detach()
            setattr(manager, _HOOKED, functools.partial(
                self._sync_step, manager))
            if has_graceful_shutdown(manager):
                setattr(manager, _GRACEFUL, functools.partial(
                    self._graceful_shutdown, manager))
            else:
                LOG.info('Nova %s has no graceful shutdown of nova-compute '
                         '(ComputeManager.graceful_shutdown, the '
                         'compute-alt RPC server): nova-lifecycle learns '
                         'that the service stops only at cleanup_host, '
                         'after its RPC server stopped.',
                         concurrency.nova_version())
            self.manager = manager
            LOG.info('nova-lifecycle hooked the power-state sync of compute '
                     'manager for host %s.', manager.host)
        return True

    def detach(self):
        manager, self.manager = self.manager, None
        if manager is not None:
            manager.__dict__.pop(_HOOKED, None)
            manager.__dict__.pop(_GRACEFUL, None)

    def _sync_step(self, manager, context, db_instance):
        # An error is Nova's periodic task's to log, with the instance.
        outcome = sync.FAILED
        try:
            outcome = sync.query_and_sync(manager, self._recent_power_states,
                                          context, db_instance)
        finally:
            self._step_done(outcome)

    def _step_done(self, outcome):
        done = time.monotonic()
        snapshot = self._recent_power_states()
        with self._outcomes_lock:
            self._outcomes[outcome] += 1
            if snapshot is not None:
                self._round = _SyncRound.next(self._round, snapshot, done)

    def status(self):
        """The power-state syncs as plain data.

        ``instances``: per-instance steps since start, by what became of
        the instance (settled by the bulk query, checked or corrected by
        Nova's decision table, skipped, gone, failed); ``hooked``: whether
        a compute manager listens; ``last sync``: the instances of the
        latest sync and the seconds from its bulk query to the end of its
        last instance (Nova syncs instances in its pool, so the periodic task
        returns before they are done); ``last bulk query``: its domains
        and seconds it took, and its age, while it is recent.
        """
        with self._outcomes_lock:
            outcomes = dict(self._outcomes)
            latest = self._round
        snapshot = self._recent_power_states()
        return {
            'hooked': self.manager is not None,
            'instances': outcomes,
            'last sync': None if latest is None else {
                'instances': latest.steps, 'seconds': latest.seconds()},
            'last bulk query': None if snapshot is None else {
                'domains': len(snapshot), 'seconds': snapshot.duration,
                'age': snapshot.age()},
        }

    def _graceful_shutdown(self, manager, *args, **kwargs):
        """The service's stop began: note it, then run Nova's method.

        Nova's method is looked up in the manager's class at each call, so
        a patch of it (a test's, a hot-fix) still runs behind this hook.
        """
        self._stopping.set()
        return type(manager).graceful_shutdown(manager, *args, **kwargs)

    def shutdown_in_progress(self):
        """True once the listening manager's service has begun to stop."""
        manager = self.manager
        return self._stopping.is_set() or (
            manager is not None and shutdown_began(manager))

    def resync(self):
        """Run the manager's power-state sync now, if a manager listens."""
        manager = self.manager
        if manager is None:
            LOG.debug('No compute manager to resync power states with.')
            return False
        if self.shutdown_in_progress():
            # Nova skips its periodic tasks from then on, and once its
            # executors are shut down the sync could not run anyway.
            LOG.info('Not resyncing power states after the reconnect: '
                     'nova-compute on host %s is stopping; the sync at its '
                     'next start covers every instance.', manager.host)
            return False
        LOG.info('Resyncing the power state of every instance of host %s.',
                 manager.host)
        manager._sync_power_states(nova_context.get_admin_context())
        return True


class _SyncRound:
    """The instances of one periodic sync: those that used one snapshot."""

    def __init__(self, snapshot, done):
        self.snapshot = snapshot
        self.steps = 1
        self.last_done = done

    @classmethod
    def next(cls, current, snapshot, done):
        if current is None or current.snapshot is not snapshot:
            return cls(snapshot, done)
        current.steps += 1
        current.last_done = max(current.last_done, done)
        return current

    def seconds(self):
        """From the start of the bulk query to the end of the last step."""
        started = self.snapshot.taken_at - (self.snapshot.duration or 0.0)
        return self.last_done - started
