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

"""The compute manager's two hot paths, plugin vs upstream, in one run.

    python benchmarks/compute_manager.py [--call-cost-ms 0.093]
                                         [--repeats 3]

Runs, in this one process, ``power_sync.py`` (Nova's periodic
``_sync_power_states`` at N = 10, 100, 1000 with a real sqlite database,
each libvirt call charged ``--call-cost-ms``, the per-call cost
``libvirt_call_cost.py`` measured on a real libvirtd) and then
``event_burst.py`` (1000 lifecycle events over 100 instances, a 20 ms
handler), and ends with the goals they are held to: sync libvirt calls
that do not grow with N, a sync at least 10 times faster at N = 1000, a
burst p99 at least 8 times lower, and libvirt's loop thread never held
for a handler's time. Exits 1 if a goal is missed.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import power_sync  # noqa: E402  (first: it picks the concurrency mode)
import event_burst  # noqa: E402,H306

HANDLER_MS = 20.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--call-cost-ms', default='0.093')
    parser.add_argument('--repeats', default='3')
    args = parser.parse_args()

    if power_sync.main(['--sizes', '10,100,1000', '--repeats', args.repeats,
                        '--call-cost-ms', args.call_cost_ms]) != 0:
        return 1
    print()
    burst = event_burst.main(['--events', '1000', '--instances', '100',
                              '--handler-ms', str(HANDLER_MS),
                              '--repeats', args.repeats])

    sync = power_sync.RESULTS
    calls = [sync[(n, 'plugin')][0] for n in (10, 100, 1000)]
    sync_ratio = sync[(1000, 'upstream')][2] / sync[(1000, 'plugin')][2]
    up = burst['upstream Host (threading)']
    plugin = burst['plugin pipeline']
    p99_ratio = up[1] / plugin[1]
    held_max_ms = plugin[3] * 1000
    goals = [
        ('sync libvirt calls do not grow with N (%s)' % calls,
         len(set(calls)) == 1),
        ('sync at N = 1000 at least 10x faster: %.1fx' % sync_ratio,
         sync_ratio >= 10),
        ('burst p99 at least 8x lower: %.1fx' % p99_ratio, p99_ratio >= 8),
        ("loop thread never held for a handler's %.0f ms: max %.3f ms"
         % (HANDLER_MS, held_max_ms), held_max_ms < HANDLER_MS),
    ]
    print()
    for text, met in goals:
        print('%-4s %s' % ('met' if met else 'MISS', text))
    return 0 if all(met for _, met in goals) else 1


if __name__ == '__main__':
    sys.exit(main())
