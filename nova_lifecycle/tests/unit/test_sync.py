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

"""The power-state sync through the plugin's hook on Nova's real manager.

The decision table is Nova's (``_sync_instance_power_state``); the plugin
feeds it from one bulk query. The table test below runs every cell through
the hooked manager so a reader sees the whole table in one place.
"""

from importlib import metadata
import inspect
import os
import time
from unittest import mock

import fixtures
from nova.compute import manager as compute_manager
from nova.compute import power_state
from nova.compute import task_states
from nova.compute import vm_states
from nova import context as nova_context
from nova import exception
from nova import objects
from nova import test
from nova.tests import fixtures as nova_fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import hardware

from nova_lifecycle.compute import hooks
from nova_lifecycle.compute import sync
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.tests.unit import test_metrics
from nova_lifecycle.virt import metrics
from nova_lifecycle.virt import snapshot

UUID = '11111111-2222-3333-4444-555555555555'
NOVA_MAJOR = int(metadata.version('nova').split('.')[0])
# Nova 33 on: the service calls the manager's graceful_shutdown when it
# stops; nova 31 and 32 have no such method.
NOVA_GRACEFUL_SHUTDOWN = hasattr(compute_manager.ComputeManager,
                                 'graceful_shutdown')

NOSTATE = power_state.NOSTATE
RUNNING = power_state.RUNNING
PAUSED = power_state.PAUSED
SHUTDOWN = power_state.SHUTDOWN
CRASHED = power_state.CRASHED
SUSPENDED = power_state.SUSPENDED
ALL_POWER_STATES = (NOSTATE, RUNNING, PAUSED, SHUTDOWN, CRASHED, SUSPENDED)

# Nova's decision for an instance with no task: vm_state x hypervisor power
# state -> the compute API call the sync makes (None: none, at most a
# warning). The DB power_state is updated whenever it differs.
DECISIONS = {
    vm_states.ACTIVE: {SHUTDOWN: 'stop', CRASHED: 'stop',
                       SUSPENDED: 'stop'},
    vm_states.STOPPED: {RUNNING: 'force_stop', PAUSED: 'force_stop',
                        SUSPENDED: 'force_stop'},
    vm_states.PAUSED: {SHUTDOWN: 'force_stop', CRASHED: 'force_stop'},
    vm_states.BUILDING: {},
    vm_states.RESCUED: {},
    vm_states.RESIZED: {},
    vm_states.SUSPENDED: {},
    vm_states.ERROR: {},
    vm_states.SOFT_DELETED: {},
    vm_states.DELETED: {},
}


class DecisionTableTest(test.NoDBTestCase):

    REQUIRES_LOCKING = True

    def setUp(self):
        super().setUp()
        self.useFixture(nova_fixtures.SpawnIsSynchronousFixture())
        self.compute = compute_manager.ComputeManager()
        self.context = nova_context.get_admin_context()
        self.snapshot = None
        self.hooks = hooks.ManagerHooks(lambda: self.snapshot)
        self.assertTrue(self.hooks.attach(self.compute.handle_events))
        self.addCleanup(self.hooks.detach)
        api = self.compute.compute_api
        self.stop = self.useFixture(
            fixtures.MockPatchObject(api, 'stop')).mock
        self.force_stop = self.useFixture(
            fixtures.MockPatchObject(api, 'force_stop')).mock
        self.delete = self.useFixture(
            fixtures.MockPatchObject(api, 'delete')).mock
        self.save = self.useFixture(
            fixtures.MockPatchObject(objects.Instance, 'save')).mock
        self.refresh = self.useFixture(
            fixtures.MockPatchObject(objects.Instance, 'refresh')).mock
        self.get_info = self.useFixture(fixtures.MockPatchObject(
            self.compute.driver, 'get_info')).mock

    def instance(self, vm_state, db_power_state, task_state=None,
                 host=None, shutdown_terminate=False):
        instance = objects.Instance(
            uuid=UUID, vm_state=vm_state, power_state=db_power_state,
            task_state=task_state, host=host or self.compute.host,
            shutdown_terminate=shutdown_terminate)
        return instance

    def sync(self, instance, hypervisor_state, in_snapshot=True):
        """One instance through the hooked per-instance sync step."""
        for m in (self.stop, self.force_stop, self.delete, self.save,
                  self.get_info):
            m.reset_mock()
        if hypervisor_state == NOSTATE:
            self.get_info.side_effect = exception.InstanceNotFound(
                instance_id=UUID)
        else:
            self.get_info.side_effect = None
            self.get_info.return_value = hardware.InstanceInfo(
                state=hypervisor_state)
        states = {UUID: hypervisor_state} if (
            in_snapshot and hypervisor_state != NOSTATE) else {}
        self.snapshot = snapshot.PowerStateSnapshot(states)
        self.compute._query_driver_power_state_and_sync(self.context,
                                                        instance)

    def action(self):
        called = [name for name, m in (('stop', self.stop),
                                       ('force_stop', self.force_stop),
                                       ('delete', self.delete))
                  if m.called]
        self.assertLessEqual(len(called), 1)
        return called[0] if called else None

    def test_every_cell_of_the_table(self):
        for vm_state, row in DECISIONS.items():
            for db_state in (RUNNING, SHUTDOWN):
                for vm_power in ALL_POWER_STATES:
                    cell = (vm_state, db_state, vm_power)
                    instance = self.instance(vm_state, db_state)
                    self.sync(instance, vm_power)
                    self.assertEqual(row.get(vm_power), self.action(), cell)
                    # c) the DB follows the hypervisor.
                    self.assertEqual(vm_power != db_state, self.save.called,
                                     cell)
                    self.assertEqual(vm_power, instance.power_state, cell)
                    # One bulk query; the domain is read on its own only
                    # where the query and the DB differ (and again before
                    # a stop, as Nova re-checks uncached).
                    own_reads = [c for c in self.get_info.call_args_list
                                 if c.kwargs.get('use_cache') is not False]
                    self.assertEqual(int(vm_power != db_state),
                                     len(own_reads), cell)

    def test_shutdown_terminate_deletes_instead_of_stopping(self):
        for vm_power in (SHUTDOWN, CRASHED):
            instance = self.instance(vm_states.ACTIVE, RUNNING,
                                     shutdown_terminate=True)
            self.sync(instance, vm_power)
            self.assertEqual('delete', self.action())

    def test_active_shutdown_rechecked_uncached_before_stop(self):
        instance = self.instance(vm_states.ACTIVE, RUNNING)
        self.sync(instance, SHUTDOWN)
        self.get_info.assert_called_with(instance, use_cache=False)
        # The re-check says it runs again: no stop.
        self.get_info.side_effect = [
            hardware.InstanceInfo(state=SHUTDOWN),
            hardware.InstanceInfo(state=RUNNING)]
        self.stop.reset_mock()
        instance = self.instance(vm_states.ACTIVE, RUNNING)
        self.snapshot = snapshot.PowerStateSnapshot({UUID: SHUTDOWN})
        self.compute._query_driver_power_state_and_sync(self.context,
                                                        instance)
        self.assertFalse(self.stop.called)

    def test_pending_task_is_skipped(self):
        instance = self.instance(vm_states.ACTIVE, RUNNING,
                                 task_state=task_states.REBOOTING)
        self.sync(instance, SHUTDOWN)
        self.assertIsNone(self.action())
        self.assertFalse(self.save.called)
        self.assertFalse(self.refresh.called)

    def test_instance_moved_to_another_host_is_skipped(self):
        instance = self.instance(vm_states.ACTIVE, RUNNING, host='other')
        self.sync(instance, SHUTDOWN)
        self.assertIsNone(self.action())
        self.assertFalse(self.save.called)

    def test_without_snapshot_each_instance_is_read(self):
        instance = self.instance(vm_states.ACTIVE, RUNNING)
        self.get_info.return_value = hardware.InstanceInfo(state=RUNNING)
        self.snapshot = None
        self.compute._query_driver_power_state_and_sync(self.context,
                                                        instance)
        self.get_info.assert_called_once_with(instance)

    def test_a_row_without_its_states_loaded_is_synced(self):
        # Nova's own manager tests hand the step a bare Instance (uuid and
        # task_state only) with Nova's step mocked: telling whether the
        # row changed must not lazy-load the fields it lacks.
        instance = objects.Instance(uuid=UUID, task_state=None)
        self.get_info.side_effect = exception.InstanceNotFound(
            instance_id=UUID)
        with mock.patch.object(self.compute,
                               '_sync_instance_power_state') as step:
            self.compute._query_driver_power_state_and_sync(self.context,
                                                            instance)
        step.assert_called_once_with(self.context, instance, NOSTATE,
                                     use_slave=True)
        self.assertEqual({sync.DECIDED_BY_NOVA: 1},
                         self.hooks.status()['instances'])

    def test_deleted_during_sync_is_ignored(self):
        instance = self.instance(vm_states.ACTIVE, RUNNING)
        self.refresh.side_effect = exception.InstanceNotFound(
            instance_id=UUID)
        self.sync(instance, SHUTDOWN)
        self.assertIsNone(self.action())
        self.assertFalse(self.get_info.called)

    def test_settled_rows_are_not_read_again_others_once(self):
        for vm_power, reads in ((RUNNING, 0), (SHUTDOWN, 1)):
            self.refresh.reset_mock()
            self.sync(self.instance(vm_states.ACTIVE, RUNNING), vm_power)
            self.assertEqual(reads, self.refresh.call_count, vm_power)
            if reads:
                self.refresh.assert_called_once_with(use_slave=True)
        # Agreeing, but Nova has something to do (stop): read again.
        self.refresh.reset_mock()
        self.sync(self.instance(vm_states.ACTIVE, SHUTDOWN), SHUTDOWN)
        self.refresh.assert_called_once_with(use_slave=True)
        self.assertEqual('stop', self.action())

    def test_settled_is_exactly_where_nova_neither_acts_nor_logs(self):
        """sync.SETTLED against Nova's own _sync_instance_power_state."""
        vm_states_seen = set(DECISIONS) | {vm_states.SHELVED,
                                           vm_states.SHELVED_OFFLOADED}
        for vm_state in sorted(vm_states_seen):
            for power in ALL_POWER_STATES:
                cell = (vm_state, power)
                instance = self.instance(vm_state, power)
                for m in (self.stop, self.force_stop, self.delete,
                          self.save, self.get_info):
                    m.reset_mock()
                # Nova re-reads a domain it is about to stop; same answer.
                self.get_info.side_effect = None
                self.get_info.return_value = hardware.InstanceInfo(
                    state=power)
                with mock.patch.object(compute_manager, 'LOG') as log:
                    compute_manager.ComputeManager._sync_instance_power_state(
                        self.compute, self.context, instance, power,
                        use_slave=True)
                nova_quiet = not any(
                    m.called for m in (self.stop, self.force_stop,
                                       self.delete, self.save, self.get_info,
                                       log.warning, log.error,
                                       log.exception, log.info))
                if vm_state in sync.SETTLED:
                    self.assertEqual(nova_quiet, sync.settled(instance,
                                                              power), cell)
                else:
                    # Not in Nova's table: the plugin takes the full path.
                    self.assertFalse(sync.settled(instance, power), cell)

    def test_detach_restores_nova_step(self):
        self.hooks.detach()
        self.assertNotIn('_query_driver_power_state_and_sync',
                         self.compute.__dict__)
        self.assertEqual(
            compute_manager.ComputeManager._query_driver_power_state_and_sync,
            type(self.compute)._query_driver_power_state_and_sync)

    def test_the_status_counts_what_became_of_each_instance(self):
        self.sync(self.instance(vm_states.ACTIVE, RUNNING), RUNNING)
        self.sync(self.instance(vm_states.ACTIVE, RUNNING), SHUTDOWN)
        self.sync(self.instance(vm_states.ACTIVE, RUNNING,
                                task_state='rebooting'), RUNNING)
        status = self.hooks.status()
        self.assertTrue(status['hooked'])
        self.assertEqual({sync.SETTLED_BY_SNAPSHOT: 1,
                          sync.CORRECTED: 1, sync.SKIPPED: 1},
                         status['instances'])

    if NOVA_GRACEFUL_SHUTDOWN:
        def test_detach_restores_nova_graceful_shutdown(self):
            self.hooks.detach()
            self.assertNotIn('graceful_shutdown', self.compute.__dict__)

        def test_no_resync_once_graceful_shutdown_began(self):
            self._no_resync_once_graceful_shutdown_began()
    else:
        def test_no_graceful_shutdown_is_said_once(self):
            """Nova 31/32: nothing to hook, and a line that says so."""
            self.hooks.detach()
            log = self.useFixture(fixtures.FakeLogger(
                name='nova_lifecycle.compute.hooks'))
            self.assertTrue(self.hooks.attach(self.compute.handle_events))
            self.assertNotIn('graceful_shutdown', self.compute.__dict__)
            self.assertEqual(1, log.output.count('has no graceful shutdown'),
                             log.output)
            self.assertIn('learns that the service stops only at '
                          'cleanup_host', log.output)
            self.assertFalse(self.hooks.shutdown_in_progress())

        def test_drift_nova_has_no_graceful_shutdown(self):
            """What the hooks assume of nova 31/32's compute service."""
            from nova import service
            self.assertLess(NOVA_MAJOR, 33)
            self.assertFalse(hasattr(compute_manager.ComputeManager,
                                     'graceful_shutdown'))
            self.assertNotIn('compute-alt', inspect.getsource(service))

    def _no_resync_once_graceful_shutdown_began(self):
        sync_power_states = self.useFixture(fixtures.MockPatchObject(
            self.compute, '_sync_power_states')).mock
        self.assertTrue(self.hooks.resync())
        self.assertEqual(1, sync_power_states.call_count)
        self.useFixture(fixtures.MockPatchObject(
            compute_manager.ComputeManager, 'cleanup_host'))
        self.useFixture(fixtures.MockPatch('time.sleep'))
        self.flags(manager_shutdown_timeout=0)
        # What the service's stop calls; nova 34 passes a timeout.
        graceful = compute_manager.ComputeManager.graceful_shutdown
        params = inspect.signature(graceful).parameters
        self.compute.graceful_shutdown(
            *([0] if 'timeout' in params else []))
        self.assertTrue(self.hooks.shutdown_in_progress())
        self.assertFalse(self.hooks.resync())
        self.assertEqual(1, sync_power_states.call_count)

    def test_nova_34s_shutdown_flag_is_read(self):
        flag = getattr(self.compute, '_shutdown_in_progress', None)
        if flag is None:
            # nova 33 has no flag: graceful_shutdown alone tells.
            self.assertFalse(hooks.shutdown_began(self.compute))
            return
        self.assertFalse(self.hooks.shutdown_in_progress())
        self.compute.set_shutdown_in_progress()
        self.assertTrue(self.hooks.shutdown_in_progress())
        self.assertFalse(self.hooks.resync())

    def test_not_a_manager_is_not_hooked(self):
        other = hooks.ManagerHooks(lambda: None)
        self.assertFalse(other.attach(print))
        self.assertFalse(other.resync())


def _fake_get_all_domain_stats(self, stats, flags=0):
    """What libvirt's getAllDomainStats(state) returns, for Nova's fake."""
    return [(dom, {'state.state': dom._state, 'state.reason': 0})
            for dom in self._vms.values()]


class CallCounter(fixtures.Fixture):
    """Counts calls of Nova's fake libvirt connection and domains.

    ``cost`` seconds are spent in each call, to stand for libvirtd's RPC
    (the benchmarks set it; the tests leave it at 0).
    """

    CALLS = (('Connection', 'getAllDomainStats'),
             ('Connection', 'listAllDomains'),
             ('Connection', 'lookupByUUIDString'),
             ('Domain', 'info'))

    def __init__(self, cost=0.0):
        super().__init__()
        self.cost = cost

    def _setUp(self):
        self.counts = {}
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Connection.getAllDomainStats',
            _fake_get_all_domain_stats))
        for cls_name, name in self.CALLS:
            cls = getattr(fakelibvirt, cls_name)
            self.useFixture(fixtures.MonkeyPatch(
                'nova.tests.fixtures.libvirt.%s.%s' % (cls_name, name),
                self._counted(name, getattr(cls, name))))

    def _counted(self, name, method):
        def counted(*args, **kwargs):
            self.counts[name] = self.counts.get(name, 0) + 1
            if self.cost:
                time.sleep(self.cost)
            return method(*args, **kwargs)
        return counted

    def total(self):
        return sum(self.counts.values())

    def reset(self):
        self.counts.clear()


# Nova 31's ComputeManager runs its per-instance syncs on this GreenPool;
# nova 32 on made it an executor that utils.spawn_on takes.
SYNC_POOL_NOVA_31 = '_sync_power_pool'


class DeferredSpawn(fixtures.Fixture):
    """Collects what ``_sync_power_states`` spawns, to run it afterwards.

    Running the per-instance syncs inline would deadlock: the manager
    spawns them while holding its syncs-in-progress lock.
    """

    TARGETS = ('nova.thread_pool_factory.spawn_on',  # nova 34
               'nova.utils.spawn_on')                # nova 32, 33

    def __init__(self, *managers):
        """``managers``: those whose syncs nova 31 spawns on their pool."""
        super().__init__()
        self._managers = managers

    def _setUp(self):
        self.spawned = []
        import importlib
        for target in self.TARGETS:
            module, name = target.rsplit('.', 1)
            try:
                found = hasattr(importlib.import_module(module), name)
            except ImportError:
                found = False
            if found:
                self.useFixture(fixtures.MonkeyPatch(target, self.spawn_on))
        self.also_for(*self._managers)

    def also_for(self, *managers):
        """Nova 31 spawns each sync on the manager's own GreenPool."""
        for manager in managers:
            pool = getattr(manager, SYNC_POOL_NOVA_31, None)
            if pool is not None:
                self.useFixture(fixtures.MockPatchObject(
                    pool, 'spawn_n', side_effect=self.spawn))

    def spawn_on(self, executor, func, *args, **kwargs):
        self.spawn(func, *args, **kwargs)

    def spawn(self, func, *args, **kwargs):
        self.spawned.append((func, args, kwargs))

    def run_all(self):
        ran = 0
        while self.spawned:
            func, args, kwargs = self.spawned.pop(0)
            func(*args, **kwargs)
            ran += 1
        return ran


class BulkSyncCallCountTest(test_driver.DriverTestCase):
    """libvirt calls of one periodic sync at N = 1, 100, 1000."""

    REQUIRES_LOCKING = True

    def setUp(self):
        super().setUp()
        self.counter = self.useFixture(CallCounter())
        self.compute = compute_manager.ComputeManager()
        self.compute.driver = self.driver
        self.driver.register_event_listener(self.compute.handle_events)
        self.conn = self.start_events()
        # After start_events: the Host spawns its connection-event loop.
        self.spawns = self.useFixture(DeferredSpawn(self.compute))
        self.useFixture(fixtures.MockPatchObject(objects.Instance,
                                                 'refresh'))
        self.useFixture(fixtures.MockPatchObject(
            self.compute, 'handle_events'))
        self.instances = []
        self.useFixture(fixtures.MockPatch(
            'nova.objects.InstanceList.get_by_host',
            side_effect=lambda *a, **k: self.instances))

    def add_instances(self, count):
        for _ in range(count):
            n = len(self.instances)
            uuid = '00000000-0000-0000-0000-%012d' % n
            self.conn.createXML(test_driver.domain_xml(uuid, n), 0)
            self.instances.append(objects.Instance(
                uuid=uuid, vm_state=vm_states.ACTIVE, power_state=RUNNING,
                task_state=None, host=self.compute.host,
                shutdown_terminate=False))

    def sync_calls(self, unsettled=0):
        """libvirt calls of one sync.

        ``unsettled`` instances reach Nova's decision; the others are
        settled by the bulk query alone.
        """
        self.counter.reset()
        with mock.patch.object(self.compute, '_sync_instance_power_state',
                               wraps=self.compute._sync_instance_power_state
                               ) as synced:
            self.compute._sync_power_states(self.context())
            self.assertEqual(len(self.instances), self.spawns.run_all())
        self.assertEqual(unsettled, synced.call_count)
        return dict(self.counter.counts)

    def context(self):
        return nova_context.get_admin_context()

    def test_calls_do_not_grow_with_instances(self):
        seen = {}
        for target in (1, 100, 1000):
            self.add_instances(target - len(self.instances))
            seen[target] = self.sync_calls()
        self.assertEqual({'getAllDomainStats': 1}, seen[1])
        self.assertEqual(seen[1], seen[100])
        self.assertEqual(seen[1], seen[1000])

    def test_a_mismatch_costs_one_read_of_that_domain(self):
        self.add_instances(50)
        self.instances[7].power_state = SHUTDOWN
        with mock.patch.object(self.compute.compute_api, 'stop'):
            calls = self.sync_calls(unsettled=1)
        self.assertEqual(1, calls.pop('getAllDomainStats'))
        self.assertLessEqual(sum(calls.values()), 2, calls)
        self.assertEqual(RUNNING, self.instances[7].power_state)

    def test_a_sync_is_timed_and_its_corrections_counted(self):
        self.add_instances(20)
        self.instances[3].power_state = SHUTDOWN
        self.instances[4].power_state = SHUTDOWN
        with mock.patch.object(objects.Instance, 'save',
                               side_effect=[None, ValueError('db down')]):
            self.sync_calls(unsettled=2)
        status = self.driver.power_sync.status()
        self.assertEqual({sync.SETTLED_BY_SNAPSHOT: 18, sync.CORRECTED: 1,
                          sync.FAILED: 1}, status['instances'])
        latest = status['last sync']
        self.assertEqual(20, latest['instances'])
        self.assertGreaterEqual(latest['seconds'],
                                status['last bulk query']['seconds'])

        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'nova_lifecycle.prom')
        metrics.write_textfile(self.driver, path)
        got = test_metrics.read(path)
        self.assertEqual(latest['seconds'],
                         got[(metrics.PREFIX + 'power_sync_seconds', ())])
        self.assertEqual(1, got[(
            metrics.PREFIX + 'power_sync_instances_total',
            (('outcome', sync.CORRECTED),))])

        # The next sync, one more instance, is a round of its own.
        self.add_instances(1)
        self.sync_calls()
        self.assertEqual(21, self.driver.power_sync.status()[
            'last sync']['instances'])
