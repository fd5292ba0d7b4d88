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

"""The inbox of the mode the tests run in: start, put, stop."""

import os
import threading

from nova_lifecycle.common import inbox
from nova_lifecycle import concurrency
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures

WAIT = 10


def open_fds():
    return len(os.listdir('/proc/self/fd'))


class InboxTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.handled = []
        self.cond = threading.Condition()

    def handler(self, item):
        with self.cond:
            self.handled.append(item)
            self.cond.notify_all()

    def make(self):
        return inbox.make_inbox(self.handler, 'lifecycle-test-inbox',
                                green=not concurrency.threading_mode())

    def wait_handled(self, count):
        with self.cond:
            return self.cond.wait_for(lambda: len(self.handled) >= count,
                                      WAIT)

    def test_an_inbox_never_started_holds_no_descriptor(self):
        before = open_fds()
        boxes = [self.make() for _ in range(50)]
        self.assertEqual(before, open_fds())
        for box in boxes:
            self.assertTrue(box.stop())
        self.assertEqual(before, open_fds())

    def test_what_was_put_before_the_start_is_handled(self):
        box = self.make()
        box.put('early')
        box.start()
        self.addCleanup(box.stop)
        box.put('late')
        self.assertTrue(self.wait_handled(2))
        self.assertEqual(['early', 'late'], self.handled)

    def test_stop_handles_what_was_put_then_refuses_or_handles(self):
        box = self.make()
        box.start()
        for n in range(100):
            box.put(n)
        self.assertTrue(box.stop())
        self.assertEqual(list(range(100)), self.handled)
        self.assertFalse(box.is_alive())
        try:
            box.put('after')
        except RuntimeError:
            self.assertNotIn('after', self.handled)
        else:
            # The direct inbox has nothing to stop: it handles at once.
            self.assertTrue(concurrency.threading_mode())
            self.assertEqual('after', self.handled[-1])

    def test_a_failing_handler_does_not_stop_the_inbox(self):
        def handler(item):
            if item == 'bad':
                raise ValueError(item)
            self.handler(item)

        box = inbox.make_inbox(handler, 'lifecycle-test-inbox',
                               green=not concurrency.threading_mode())
        box.start()
        self.addCleanup(box.stop)
        box.put('bad')
        box.put('good')
        self.assertTrue(self.wait_handled(1))
        self.assertEqual(['good'], self.handled)
