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

"""Load the plugin the way nova-compute does and say what was loaded.

``python -m nova_lifecycle.cmd.selfcheck`` first imports
``nova.cmd.compute``, whose first line chooses nova-compute's concurrency
mode (``OS_NOVA_DISABLE_EVENTLET_PATCHING``, then ``[DEFAULT]
concurrency_backend`` from the ``--config-file`` given, then the release's
default for nova-compute: native threads on nova 34, eventlet before), so
the mode it reports is the one nova-compute would run in. It then resolves
``compute_driver = nova_lifecycle.LibvirtLifecycleDriver`` through
``nova.virt.driver.load_compute_driver`` and prints the class it got, its
place in the libvirt driver's hierarchy and the ``[lifecycle]`` options.
It connects to no hypervisor. Exit status 0 means the plugin loads.
"""

import sys


def main(argv=None):
    # What nova-compute's own entry point runs first, whatever the release.
    import nova.cmd.compute  # noqa: F401

    from nova import config
    from nova.virt import driver
    from nova.virt.libvirt import driver as libvirt_driver
    from nova.virt import virtapi

    from nova_lifecycle import concurrency
    from nova_lifecycle import conf
    from nova_lifecycle.virt import host as lifecycle_host

    config.parse_args([sys.argv[0]] + list(argv or []), configure_db=False)
    name = 'nova_lifecycle.LibvirtLifecycleDriver'
    loaded = driver.load_compute_driver(virtapi.VirtAPI(), name)
    cls = type(loaded)
    ok = isinstance(loaded, libvirt_driver.LibvirtDriver)
    print('compute_driver = %s' % name)
    print('loaded: %s.%s' % (cls.__module__, cls.__qualname__))
    print('subclass of nova.virt.libvirt.driver.LibvirtDriver: %s' % ok)
    mode = 'threading' if concurrency.threading_mode() else 'eventlet'
    if mode == 'threading' and not lifecycle_host.HOST_HAS_EVENT_HANDLER:
        mode += (' (not available on this release: its nova-compute runs '
                 'eventlet only)')
    print('nova: %s, concurrency: %s' % (_nova_version(), mode))
    print('[%s]' % conf.GROUP_NAME)
    for opt in conf.lifecycle_opts:
        print('  %s = %s' % (opt.dest,
                             getattr(conf.CONF.lifecycle, opt.dest)))
    return 0 if ok else 1


def _nova_version():
    from importlib import metadata
    return metadata.version('nova')


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
