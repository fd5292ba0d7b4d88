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

"""Held STOPPED events: who takes a hold out ends its entry, once."""

import threading

from nova.virt import event as virtevent

from nova_lifecycle.common import ledger
from nova_lifecycle.eventpath import holds
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures

WAIT = 10
UUID = 'aaaaaaaa-0000-0000-0000-000000000001'


def event(transition):
    return virtevent.LifecycleEvent(UUID, transition)


class HeldStopsTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.ledger = ledger.EventLedger()
        self.forwarded = []
        self.forwarded_cond = threading.Condition()
        self.held = holds.HeldStops(self.forward, 'lifecycle-test-holds')
        self.addCleanup(self.held.close)

    def forward(self, event, entry):
        with self.forwarded_cond:
            self.forwarded.append(event.transition)
            entry.deliver()
            self.forwarded_cond.notify_all()

    def wait_forwarded(self, count):
        with self.forwarded_cond:
            self.assertTrue(self.forwarded_cond.wait_for(
                lambda: len(self.forwarded) >= count, WAIT), self.forwarded)

    def admit(self, transition, delay):
        self.held.admit(event(transition), self.ledger.open(),
                        lambda e: delay)

    def test_stopped_is_forwarded_when_due(self):
        self.admit(virtevent.EVENT_LIFECYCLE_STOPPED, 0.01)
        self.wait_forwarded(1)
        self.assertEqual([virtevent.EVENT_LIFECYCLE_STOPPED], self.forwarded)
        self.assertEqual(0, len(self.held))

    def test_event_racing_the_deadline_still_supersedes(self):
        """The delay ran out, but a newer event got in before release."""
        entered, gate = threading.Event(), threading.Event()
        due = self.held._due

        def late_due(hold):
            entered.set()
            gate.wait(WAIT)
            return due(hold)

        self.held._due = late_due
        self.admit(virtevent.EVENT_LIFECYCLE_STOPPED, 0)
        self.assertTrue(entered.wait(WAIT))
        # The timer runs now, so cancelling it no longer stops it.
        self.admit(virtevent.EVENT_LIFECYCLE_STARTED, 0)
        gate.set()
        self.wait_forwarded(1)
        self.assertTrue(self.ledger.wait_until(
            lambda c: c['pending'] == 0, WAIT))
        counts = self.ledger.snapshot()
        self.assertEqual([virtevent.EVENT_LIFECYCLE_STARTED], self.forwarded)
        self.assertEqual({'superseded by Started': 1},
                         counts['cancelled_by_reason'])
        self.assertTrue(lc_fixtures.balanced(counts), counts)

    def test_bring_forward_never_postpones(self):
        self.admit(virtevent.EVENT_LIFECYCLE_STOPPED, 60)
        self.assertFalse(self.held.bring_forward(UUID, 120))
        (uuid, left), = self.held.held()
        self.assertGreater(left, 55)
        self.assertTrue(self.held.bring_forward(UUID, 0.01))
        self.wait_forwarded(1)
        self.assertFalse(self.held.bring_forward(UUID, 0.01))

    def test_close_cancels_what_is_held_once(self):
        self.admit(virtevent.EVENT_LIFECYCLE_STOPPED, 60)
        self.held.close()
        self.held.close()
        counts = self.ledger.snapshot()
        self.assertEqual({'shutdown': 1}, counts['cancelled_by_reason'])
        self.assertEqual(0, counts['double_ends'])
        # After close an event is cancelled, not forwarded.
        self.admit(virtevent.EVENT_LIFECYCLE_STARTED, 0)
        self.assertEqual({'shutdown': 2},
                         self.ledger.snapshot()['cancelled_by_reason'])
        self.assertEqual([], self.forwarded)


class EntryTest(base.TestCase):

    def test_an_entry_ends_once(self):
        book = ledger.EventLedger()
        entry = book.open()
        self.assertTrue(entry.deliver())
        self.assertFalse(entry.cancel('late'))
        self.assertFalse(entry.fail(RuntimeError()))
        counts = book.snapshot()
        self.assertEqual(1, counts['delivered'])
        self.assertEqual(0, counts['cancelled'] + counts['failed'])
        self.assertEqual(2, counts['double_ends'])
        self.assertFalse(lc_fixtures.balanced(counts))
