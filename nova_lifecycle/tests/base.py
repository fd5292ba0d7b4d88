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

"""Common test case: a timeout on every test and executors that fit the mode.
"""

import fixtures
import testtools

from nova_lifecycle import concurrency

# A test of this suite that runs longer than this is hanging.
TEST_TIMEOUT = 60


class TestCase(testtools.TestCase):
    """Fails instead of hanging and shuts down what it started."""

    timeout = TEST_TIMEOUT

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.Timeout(self.timeout, gentle=True))

    def make_executor(self, max_workers=4, name='test-executor'):
        """An executor for the current mode, shut down after the test."""
        executor = concurrency.make_executor(max_workers, name)
        self.addCleanup(executor.shutdown, wait=True)
        return executor
