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

"""The tiny real guest of ``tools/build-test-guest.sh``, and its tools.

Shared by the integration tests and the main job's real-libvirt mode:
where the project's tools are (the guest's build script, the libvirtd
set-up script), where the built guest lives and why it cannot be used
(missing, or built by an older version of the script). It runs from a
checkout: ``tools/`` is beside ``nova_lifecycle/`` there, and in no
installed package.
"""

import hashlib
import os

# nova_lifecycle/tests/testguest.py -> <checkout>/tools
TOOLS = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
    'tools'))
BUILD_SCRIPT = os.path.join(TOOLS, 'build-test-guest.sh')
LIBVIRT_SETUP_SCRIPT = os.path.join(TOOLS, 'libvirt-setup.sh')
DEFAULT_DIR = '/var/cache/nova-lifecycle/guest'


def files(guest_dir):
    """The guest's kernel and initramfs, in that order."""
    return [os.path.join(guest_dir, name)
            for name in ('vmlinuz', 'initrd.img')]


def problem(guest_dir):
    """Why the guest in ``guest_dir`` cannot be used, or None."""
    for path in files(guest_dir):
        if not os.path.isfile(path):
            return ('test guest not built: %s missing (run '
                    'tools/build-test-guest.sh)' % path)
    if os.path.isfile(BUILD_SCRIPT):
        with open(BUILD_SCRIPT, 'rb') as f:
            wanted = hashlib.sha256(f.read()).hexdigest()
        try:
            with open(os.path.join(guest_dir, 'build-hash')) as f:
                built = f.read().strip()
        except OSError:
            built = None
        if built != wanted:
            return ('the test guest in %s is out of date with '
                    'tools/build-test-guest.sh (run it again)' % guest_dir)
    return None
