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

"""A fixed-bucket histogram of durations, cheap enough for every event.

Prometheus-shaped (cumulative buckets, sum, count) so an exporter can hand
it on as it is; knows nothing of Nova or of Prometheus.
"""

import bisect
import threading

# Seconds: from a fast hand-over to the full 15 s STOPPED hold and beyond.
DEFAULT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0,
                   20.0, 60.0)


class Histogram:

    def __init__(self, buckets=DEFAULT_BUCKETS):
        self._bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self._bounds) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value):
        slot = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[slot] += 1
            self._sum += value

    def snapshot(self):
        """{'buckets': [(upper bound, cumulative count)...], 'sum', 'count'}.

        The last bucket's bound is ``float('inf')``.
        """
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for bound, count in zip(self._bounds + (float('inf'),), counts):
            running += count
            cumulative.append((bound, running))
        return {'buckets': cumulative, 'sum': total, 'count': running}
