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
"""

import concurrent.futures
import threading

import futurist


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


def threading_mode():
    """True when Nova runs with native threads, False under eventlet."""
    from nova import utils
    return utils.concurrency_mode_threading()


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
        return concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix=name)
    return futurist.GreenThreadPoolExecutor(max_workers=max_workers)
