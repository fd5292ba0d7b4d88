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

"""Threads and executors for whichever concurrency mode Nova runs in.

Nova runs either with native threads or with eventlet monkey patching
(``nova.monkey_patch``). The plugin's generic pieces use the ``threading``
module, which is green under eventlet; only the libvirt event loop must be
a real OS thread in both modes, because libvirt's C event loop blocks.

Nova 31 (2025.1) and 32 (2025.2) run nova-compute under eventlet only;
:func:`patch_nova` and :func:`threading_mode` cover their older
``nova.monkey_patch`` and ``nova.utils``. This module imports neither Nova
nor eventlet at load, so a test package or a script can import it before
it chooses Nova's mode.
"""

import threading


# Every thread the plugin starts is named with this prefix.
THREAD_PREFIX = 'lifecycle-'


def plugin_threads():
    """Sorted names of the plugin's threads that are alive.

    Native threads and eventlet green threads started through ``threading``
    are listed; futurist's green pool workers carry no name and are checked
    through their executor instead.
    """
    found = {}
    for module in (threading, native_threading()):
        for thread in module.enumerate():
            if thread.name.startswith(THREAD_PREFIX) and thread.is_alive():
                found[id(thread)] = thread.name
    return sorted(found.values())


def nova_version():
    """The installed Nova's version, for log lines about what it lacks."""
    from importlib import metadata
    return metadata.version('nova')


def patch_nova():
    """Choose Nova's concurrency mode as its services do, on any release.

    ``OS_NOVA_DISABLE_EVENTLET_PATCHING`` decides. Nova 32 on read it in
    ``monkey_patch.patch()``; nova 31 has no ``patch()`` and patches when
    ``nova.monkey_patch`` is first imported.
    """
    from nova import monkey_patch
    patch = getattr(monkey_patch, 'patch', None)
    if patch is not None:
        patch()


def threading_mode():
    """True when Nova runs with native threads, False under eventlet.

    Nova 31 has no ``utils.concurrency_mode_threading``: there, as in
    Nova's own function, native threads mean eventlet did not patch.
    """
    from nova import utils
    mode = getattr(utils, 'concurrency_mode_threading', None)
    if mode is not None:
        return mode()
    from eventlet import patcher
    return not patcher.is_monkey_patched('thread')


def native_threading():
    """The unpatched ``threading`` module, whatever the mode."""
    if threading_mode():
        import threading
        return threading
    from eventlet import patcher
    return patcher.original('threading')


def native_time():
    """The unpatched ``time`` module, whatever the mode."""
    if threading_mode():
        import time
        return time
    from eventlet import patcher
    return patcher.original('time')


def make_executor(max_workers, name):
    """A bounded executor whose workers fit the mode.

    Native threads are named ``<name>_<n>`` so reports and tests can find
    them; eventlet's green threads carry no OS-level name.
    """
    if threading_mode():
        import concurrent.futures
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=name)
    import futurist
    return futurist.GreenThreadPoolExecutor(max_workers=max_workers)
