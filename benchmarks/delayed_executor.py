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

Submits N tasks held 3600 s, then cancels every other one, with this
plugin's ``DelayedExecutor`` and with nova 34's
``thread_pool_factory.StaticallyDelayingCancellableTaskExecutorWrapper``
(nova 33: ``utils.StaticallyDelayingCancellableTaskExecutorWrapper``)
behind a ``futurist.SynchronousExecutor``, as the plugin used it. The runs
of the two alternate; the times are medians of the repeats (submit+cancel
is the median of each run's sum). The memory the cancelled tasks keep
once their submitter let go of them is measured in one more run each with
tracemalloc: what is still held after the cancel, less what the live
half holds (half of what the submit added). Prints the figures and the
ratios upstream / plugin (above 1: the plugin is faster). Native threads.
"""

import argparse
import gc
from importlib import metadata
import os
import statistics
import time
import tracemalloc

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'true')

from nova_lifecycle import concurrency  # noqa: E402

concurrency.patch_nova()

import futurist  # noqa: E402

from nova_lifecycle.common import delayed  # noqa: E402

DELAY = 3600


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


class Plugin:
    name = 'plugin DelayedExecutor'

    def __init__(self):
        self.executor = delayed.DelayedExecutor('bench-delayed')
        self.submit = self.executor.submit_after

    def close(self):
        self.executor.shutdown(wait=True, cancel_futures=True)


class Upstream:

    def __init__(self):
        self.executor = upstream_class()(DELAY,
                                         futurist.SynchronousExecutor())
        self.submit = self.executor.submit_with_delay

    def close(self):
        # Every task is cancelled by now: its scheduler skips them all.
        self.executor.shutdown(wait=True)


Upstream.name = 'upstream %s' % upstream_class().__name__


def traced():
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def run_once(side, tasks, measure_memory):
    """Submit ``tasks``, cancel every other one, let go of those.

    :returns: (submit s, cancel s, bytes the cancelled tasks keep);
        the memory only when ``measure_memory`` (then times are skewed).
    """
    wrapper = side()
    submit = wrapper.submit
    # Upstream's delay is its constructor's.
    args = (DELAY, noop) if side is Plugin else (noop,)
    gc.collect()
    if measure_memory:
        tracemalloc.start()
        base = traced()
    start = time.perf_counter()
    futures = [submit(*args, Payload()) for _ in range(tasks)]
    submitted = time.perf_counter() - start
    if measure_memory:
        after_submit = traced()
    gc.collect()
    start = time.perf_counter()
    for future in futures[::2]:
        future.cancel()
    cancelled = time.perf_counter() - start
    # The submitter lets go of the cancelled Futures, as the plugin does.
    del futures[::2]
    kept = 0
    if measure_memory:
        kept = traced() - base - (after_submit - base) / 2
        tracemalloc.stop()
    for future in futures:
        future.cancel()
    del futures
    wrapper.close()
    gc.collect()
    return submitted, cancelled, kept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--tasks', type=int, default=100000)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    sides = (Plugin, Upstream)
    runs = {side: [] for side in sides}
    for repeat in range(args.repeats):
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            runs[side].append(run_once(side, args.tasks, False))
    kept = {side: run_once(side, args.tasks, True)[2] for side in sides}
    results = {}
    for side in sides:
        results[side] = (statistics.median(r[0] for r in runs[side]),
                         statistics.median(r[1] for r in runs[side]),
                         statistics.median(r[0] + r[1] for r in runs[side]))
    cancelled = len(range(0, args.tasks, 2))
    print('%d tasks held %d s, every other one cancelled; nova %s, native '
          'threads; times: medians of %d runs'
          % (args.tasks, DELAY, metadata.version('nova'), args.repeats))
    print('%-62s %8s %8s %15s %9s' % ('', 'submit s', 'cancel s',
                                      'submit+cancel s', 'kept MiB'))
    for side in sides:
        print('%-62s %8.3f %8.3f %15.3f %9.1f'
              % ((side.name,) + results[side] + (kept[side] / 2**20,)))
    plugin, upstream = results[Plugin], results[Upstream]
    ratio = upstream[2] / plugin[2]
    print('ratio upstream/plugin: submit %.2fx, cancel %.2fx, '
          'submit+cancel %.2fx (goal >= 1.0: %s)'
          % (upstream[0] / plugin[0], upstream[1] / plugin[1], ratio,
             'met' if ratio >= 1.0 else 'MISSED'))
    print('memory kept by the %d cancelled tasks: plugin %.1f MiB '
          '(%.0f B each), upstream %.1f MiB (%.0f B each)'
          % (cancelled, kept[Plugin] / 2**20, kept[Plugin] / cancelled,
             kept[Upstream] / 2**20, kept[Upstream] / cancelled))


if __name__ == '__main__':
    main()
