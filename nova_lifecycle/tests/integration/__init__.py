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

"""Integration tests against a real libvirtd (qemu:///system) and QEMU.

They need ``tools/libvirt-setup.sh`` (libvirtd running) and
``tools/build-test-guest.sh`` (the tiny guest) to have run on the machine;
otherwise they are skipped, or fail when ``NOVA_LIFECYCLE_REQUIRE_LIBVIRT=1``
(as in CI). Run them with ``tox -e integration``.
"""
