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

"""A hung libvirt call and a stuck handler: said, then resynced."""

import threading

import fixtures
from nova.virt import event as virtevent

from nova_lifecycle import concurrency
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.tests.unit import test_faults
from nova_lifecycle.virt import liveness

WAIT = 10
UUID = test_driver.UUID


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class LivenessTest(test_driver.DriverTestCase):

    def setUp(self):
        super().setUp()
        self.recovered = []
        self.clock = Clock()
        self.watch = liveness.LivenessWatch(
            self.driver.event_handler, self.driver.event_path,
            lambda: self.recovered.append(True), clock=self.clock)

    def test_a_hung_libvirt_call(self):
        native = concurrency.native_threading()
        hang, release, hung = native.Event(), native.Event(), native.Event()
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.virEventRunDefaultImpl',
            lambda: (hang.is_set() and (hung.set(), release.wait(WAIT)))))
        self.start_events()
        self.assertEqual({liveness.LIBVIRT_LOOP: False,
                          liveness.DISPATCH: False}, self.watch.check(30))
        hang.set()
        self.assertTrue(hung.wait(WAIT))
        # The loop has not turned since it hung: any bound is passed.
        self.assertTrue(self.watch.check(0)[liveness.LIBVIRT_LOOP])
        self.assertIn("libvirt event loop stalled: libvirt's event loop has "
                      "not turned", self.stdlog.logger.output)
        self.assertTrue(self.watch.check(0)[liveness.LIBVIRT_LOOP])
        self.assertEqual(1, self.stdlog.logger.output.count('stalled:'))
        self.assertEqual([], self.recovered)
        hang.clear()
        release.set()
        # Moving again: the next check sees a recent turn.
        self.assertTrue(test_faults.wait_until(
            lambda: not self.watch.check(30)[liveness.LIBVIRT_LOOP]))
        self.assertEqual([True], self.recovered)
        self.assertIn('libvirt event loop moves again; resyncing',
                      self.stdlog.logger.output)

    def test_a_stuck_handler(self):
        gate, entered = threading.Event(), threading.Event()

        def stuck(event):
            entered.set()
            gate.wait(WAIT)

        self.driver.register_event_listener(stuck)
        self.start_events()
        for transition in (virtevent.EVENT_LIFECYCLE_PAUSED,
                           virtevent.EVENT_LIFECYCLE_RESUMED,
                           virtevent.EVENT_LIFECYCLE_PAUSED):
            self.driver.event_path.queue(virtevent.LifecycleEvent(
                UUID, transition))
        self.assertTrue(entered.wait(WAIT))
        self.assertTrue(self.driver.event_path.wait_for_counts(
            lambda c: c['received'] == 3, WAIT))
        self.assertEqual(2, self.driver.event_path.status().dispatch_queue)
        self.assertFalse(self.watch.check(60)[liveness.DISPATCH])
        self.clock.now += 61
        self.assertTrue(self.watch.check(60)[liveness.DISPATCH])
        self.assertIn('dispatch pool stalled: the dispatch queue has not '
                      'emptied for 61s (2 events wait',
                      self.stdlog.logger.output)
        gate.set()
        self.assertTrue(self.driver.event_path.wait_for_counts(
            lambda c: c['pending'] == 0, WAIT))
        self.assertFalse(self.watch.check(60)[liveness.DISPATCH])
        self.assertEqual([True], self.recovered)

    def test_the_watch_runs_on_its_thread_and_stops(self):
        checks = lc_fixtures.CountedCalls(
            'nova_lifecycle.virt.liveness.LivenessWatch.check')
        self.useFixture(checks)
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.driver.LIVENESS_CHECK_INTERVAL', 0.01))
        self.start_events()
        self.driver._liveness_runner.trigger()
        self.assertTrue(checks.wait_for(2, WAIT))
        self.assertIn('lifecycle-liveness', concurrency.plugin_threads())
        self.assertEqual({liveness.LIBVIRT_LOOP: False,
                          liveness.DISPATCH: False},
                         self.driver.liveness.stalled())
        self.driver.cleanup_host('compute1')
        self.assertNotIn('lifecycle-liveness', concurrency.plugin_threads())
