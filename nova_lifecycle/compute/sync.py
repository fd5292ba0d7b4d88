"""The periodic power-state sync, fed by one bulk hypervisor query.

Nova's ``_sync_power_states`` asks the driver for its number of instances
(the plugin takes a snapshot of every domain's state in that one call) and
then syncs each instance of the host in turn. :func:`query_and_sync` takes
the place of the per-instance step: it uses the snapshot where it agrees
with the database, reads the one domain again where it does not, and then
applies Nova's own decision table (``_sync_instance_power_state``).
"""

import contextlib

from oslo_log import log as logging

from nova.compute import power_state
from nova import exception

LOG = logging.getLogger(__name__)


def query_and_sync(manager, recent_power_states, context, db_instance):
    """Stands in for ``ComputeManager._query_driver_power_state_and_sync``.

    Runs under the manager's per-instance lock, the one ``stop_instance``
    takes, so the row read here cannot change under it because of a stop.

    :param recent_power_states: returns a recent PowerStateSnapshot or
        None (then every instance is read on its own, as upstream).
    """
    if db_instance.task_state is not None:
        LOG.info("During sync_power_state the instance has a pending task "
                 "(%(task)s). Skip.", {'task': db_instance.task_state},
                 instance=db_instance)
        return
    try:
        _sync_one(manager, recent_power_states(), context, db_instance)
    except exception.InstanceNotFound:
        # Deleted while we looked: nothing to sync.
        pass


def _sync_one(manager, snapshot, context, db_instance):
    vm_power_state = None
    if snapshot is not None:
        db_instance.refresh(use_slave=True)
        seen = snapshot.power_state(db_instance.uuid)
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
    with _refreshed_once(db_instance, snapshot is not None):
        manager._sync_instance_power_state(context, db_instance,
                                           vm_power_state, use_slave=True)


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
