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

"""The periodic power-state sync, fed by one bulk hypervisor query.

Nova's ``_sync_power_states`` asks the driver for its number of instances
(the plugin takes a snapshot of every domain's state in that one call) and
then syncs each instance of the host in turn. :func:`query_and_sync` takes
the place of the per-instance step. Where the snapshot agrees with the row
Nova listed at the start of the sync and Nova's table has nothing to do for
that pair (:data:`SETTLED`), the instance is done: no row refresh, no
libvirt call. Otherwise the row is refreshed, the one domain read again
where the snapshot disagrees with it, and Nova's own decision table
(``_sync_instance_power_state``) applied.
"""

import contextlib

from oslo_log import log as logging

from nova.compute import power_state
from nova.compute import vm_states
from nova import exception

LOG = logging.getLogger(__name__)

_ANY_POWER_STATE = frozenset((
    power_state.NOSTATE, power_state.RUNNING, power_state.PAUSED,
    power_state.SHUTDOWN, power_state.CRASHED, power_state.SUSPENDED))

# vm_state -> the power states for which Nova's _sync_instance_power_state,
# given a row already at that power state, neither acts nor logs: the
# instance is where Nova wants it. A unit test holds this against Nova's
# own function for every cell, so a change in Nova's table shows up.
SETTLED = {
    vm_states.ACTIVE: frozenset((power_state.RUNNING,)),
    vm_states.STOPPED: frozenset((power_state.NOSTATE, power_state.SHUTDOWN,
                                  power_state.CRASHED)),
    vm_states.PAUSED: _ANY_POWER_STATE - {power_state.SHUTDOWN,
                                          power_state.CRASHED},
    vm_states.SOFT_DELETED: frozenset((power_state.NOSTATE,
                                       power_state.SHUTDOWN)),
    vm_states.DELETED: frozenset((power_state.NOSTATE,
                                  power_state.SHUTDOWN)),
    vm_states.BUILDING: _ANY_POWER_STATE,
    vm_states.RESCUED: _ANY_POWER_STATE,
    vm_states.RESIZED: _ANY_POWER_STATE,
    vm_states.SUSPENDED: _ANY_POWER_STATE,
    vm_states.ERROR: _ANY_POWER_STATE,
}


# What became of one instance in a sync (query_and_sync's result).
SETTLED_BY_SNAPSHOT = 'settled by the bulk query'
DECIDED_BY_NOVA = 'checked by Nova\'s decision table'
CORRECTED = 'corrected by Nova\'s decision table'
SKIPPED = 'skipped: task pending'
GONE = 'gone during the sync'
FAILED = 'failed'


def settled(db_instance, seen):
    """True when the listed row and the hypervisor leave Nova nothing to do.

    ``seen`` is the snapshot's power state. The row is the one Nova listed
    just before the snapshot was taken: doing nothing on it is what upstream
    would have done had it visited this instance at that moment, and the
    lifecycle events cover what changes afterwards.
    """
    return (seen == db_instance.power_state and
            seen in SETTLED.get(db_instance.vm_state, ()))


def query_and_sync(manager, recent_power_states, context, db_instance):
    """Stands in for ``ComputeManager._query_driver_power_state_and_sync``.

    Runs under the manager's per-instance lock, the one ``stop_instance``
    takes, so the row read here cannot change under it because of a stop.

    :param recent_power_states: returns a recent PowerStateSnapshot or
        None (then every instance is read on its own, as upstream).
    :returns: what became of the instance (:data:`SETTLED_BY_SNAPSHOT`,
        :data:`DECIDED_BY_NOVA` when Nova's table left the row as it was,
        :data:`CORRECTED` when it changed the row's power state, vm state
        or task state (a stop it asked for included), :data:`SKIPPED`,
        :data:`GONE`).
    """
    if db_instance.task_state is not None:
        LOG.info("During sync_power_state the instance has a pending task "
                 "(%(task)s). Skip.", {'task': db_instance.task_state},
                 instance=db_instance)
        return SKIPPED
    try:
        return _sync_one(manager, recent_power_states(), context,
                         db_instance)
    except exception.InstanceNotFound:
        # Deleted while we looked: nothing to sync.
        return GONE


def _sync_one(manager, snapshot, context, db_instance):
    vm_power_state = None
    if snapshot is not None:
        seen = snapshot.power_state(db_instance.uuid)
        if settled(db_instance, seen):
            return SETTLED_BY_SNAPSHOT
        db_instance.refresh(use_slave=True)
        if seen == db_instance.power_state:
            vm_power_state = seen
        else:
            LOG.debug('Power state of the bulk query (%(seen)s) differs from '
                      'the database (%(db)s); reading the domain again.',
                      {'seen': seen, 'db': db_instance.power_state},
                      instance=db_instance)
    if vm_power_state is None:
        try:
            vm_power_state = manager.driver.get_info(db_instance).state
        except exception.InstanceNotFound:
            vm_power_state = power_state.NOSTATE
    before = _row_state(db_instance)
    with _refreshed_once(db_instance, snapshot is not None):
        manager._sync_instance_power_state(context, db_instance,
                                           vm_power_state, use_slave=True)
    return DECIDED_BY_NOVA if _row_state(db_instance) == before else CORRECTED


_ROW_STATE_FIELDS = ('power_state', 'vm_state', 'task_state')


def _row_state(db_instance):
    """The row's states, without lazy-loading a field the row lacks."""
    return tuple(getattr(db_instance, field)
                 if db_instance.obj_attr_is_set(field) else None
                 for field in _ROW_STATE_FIELDS)


@contextlib.contextmanager
def _refreshed_once(db_instance, fresh_row):
    """Spare Nova's step a second read of a row just read under its lock.

    ``_sync_instance_power_state`` starts with ``refresh()``; the row was
    refreshed above under the same per-instance lock, so that read would
    return the same row. Upstream reads each row once per sync; so do we.
    """
    if not fresh_row:
        yield
        return
    db_instance.refresh = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del db_instance.refresh
