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

"""The lifecycle and power-state tests of nova's compute manager."""

from conformance import suites

MODULES = ['nova.tests.unit.compute.test_compute_mgr']
# Test method names: lifecycle events, their emitters, the power-state sync.
TEST_NAMES = r'lifecycle|power_state|virt_event|handle_events'


def load_tests(loader, tests, pattern):
    return suites.load(loader, 'compute', MODULES, TEST_NAMES)
