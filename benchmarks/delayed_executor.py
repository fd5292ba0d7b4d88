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

"""DelayedExecutor vs upstream Nova's delaying executor, same run.

    python benchmarks/delayed_executor.py [--tasks 100000] [--repeats 5]

For N tasks pending behind a long delay, measures (median of the repeats):
the time to submit them all, the time to cancel half of them, and the
memory still held after the cancel (tracemalloc), for this plugin's
``DelayedExecutor`` and for nova 34's
``thread_pool_factory.StaticallyDelayingCancellableTaskExecutorWrapper``
(nova 33: ``utils.StaticallyDelayingCancellableTaskExecutorWrapper``).
Prints the figures and the ratio upstream / plugin (above 1: the plugin is
better). Runs with native threads.
"""

import argparse
import concurrent.futures
import gc
import os
import statistics
import time
import tracemalloc

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'true')

from nova import monkey_patch  # noqa: E402

monkey_patch.patch()

from nova_lifecycle.common import delayed  # noqa: E402


def upstream_class():
    try:
        from nova import thread_pool_factory as pools
        return pools.StaticallyDelayingCancellableTaskExecutorWrapper
    except (ImportError, AttributeError):
        from nova import utils
        return utils.StaticallyDelayingCancellableTaskExecutorWrapper


class Payload:
    """Stands for what a held event keeps alive (the event, its args)."""

    __slots__ = ('data',)

    def __init__(self):
        self.data = bytes(200)


def noop(payload):
    return None


def run_once(make, tasks, measure_memory):
    """Submit ``tasks``, cancel every other one.

    :returns: (submit seconds, cancel seconds, bytes the cancel freed);
        timings are taken without tracemalloc, memory in its own run.
    """
    executor = concurrent.futures.ThreadPoolExecutor(2)
    wrapper = make(executor)
    gc.collect()
    if measure_memory:
        tracemalloc.start()
    start = time.perf_counter()
    futures = [wrapper_submit(wrapper, noop, Payload())
               for _ in range(tasks)]
    submitted = time.perf_counter() - start
    gc.collect()
    before = tracemalloc.get_traced_memory()[0] if measure_memory else 0
    start = time.perf_counter()
    for future in futures[::2]:
        future.cancel()
    cancelled = time.perf_counter() - start
    # The caller lets go of the cancelled Futures, as Nova's host does.
    del futures[::2]
    gc.collect()
    freed = 0
    if measure_memory:
        freed = before - tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    del futures
    shutdown(wrapper)
    executor.shutdown(wait=True)
    return submitted, cancelled, freed


def wrapper_submit(wrapper, fn, *args):
    if isinstance(wrapper, delayed.DelayedExecutor):
        return wrapper.submit(fn, *args)
    return wrapper.submit_with_delay(fn, *args)


def shutdown(wrapper):
    if isinstance(wrapper, delayed.DelayedExecutor):
        wrapper.shutdown(wait=True, cancel_pending=True)
        return
    # Upstream's scheduler sits on the next deadline (an hour away); let
    # its daemon thread go rather than wait for it.
    wrapper.shutdown(wait=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', type=int, default=100000)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    upstream = upstream_class()
    makers = {
        'plugin DelayedExecutor':
            lambda ex: delayed.DelayedExecutor(ex, 3600, name='bench'),
        'upstream %s' % upstream.__name__:
            lambda ex: upstream(3600, ex),
    }
    results = {}
    for name, make in makers.items():
        runs = [run_once(make, args.tasks, False)
                for _ in range(args.repeats)]
        freed = run_once(make, args.tasks, True)[2]
        results[name] = (statistics.median(r[0] for r in runs),
                         statistics.median(r[1] for r in runs), freed)
    print('%d tasks pending (delay 3600 s), every other one cancelled; '
          'times: median of %d runs' % (args.tasks, args.repeats))
    print('%-62s %9s %9s %12s' % ('', 'submit s', 'cancel s',
                                  'freed MiB'))
    for name, (sub, can, freed) in results.items():
        print('%-62s %9.3f %9.3f %12.1f' % (name, sub, can, freed / 2**20))
    plugin, up = list(results.values())
    print('ratio upstream/plugin: submit time %.2fx, cancel time %.2fx; '
          'memory freed by cancelling: plugin %.1f MiB, upstream %.1f MiB'
          % (up[0] / plugin[0], up[1] / plugin[1],
             plugin[2] / 2**20, up[2] / 2**20))


if __name__ == '__main__':
    main()
