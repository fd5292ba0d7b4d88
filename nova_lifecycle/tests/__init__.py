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

"""Test package: choose Nova's concurrency mode before anything else loads.

Nova's own test packages choose it first, so the environment decides the
mode: ``OS_NOVA_DISABLE_EVENTLET_PATCHING=true`` runs the tests with native
threads, anything else with eventlet (see ``concurrency.patch_nova``).
"""

from nova_lifecycle import concurrency

concurrency.patch_nova()
