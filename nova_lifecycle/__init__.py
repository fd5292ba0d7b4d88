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

"""nova-lifecycle: instance power-state lifecycle plugin for Nova's libvirt
driver. Operators set ``[DEFAULT] compute_driver =
nova_lifecycle.LibvirtLifecycleDriver``.

The driver is imported on first use, not with the package: importing Nova
here would load eventlet before a service or test runner has chosen its
concurrency mode (``nova.monkey_patch``), and the import alias that makes
``nova.virt.nova_lifecycle`` resolve must stay cheap at start-up.
"""

__all__ = ['LibvirtLifecycleDriver']


def __getattr__(name):
    if name == 'LibvirtLifecycleDriver':
        from nova_lifecycle.virt.driver import LibvirtLifecycleDriver
        return LibvirtLifecycleDriver
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
