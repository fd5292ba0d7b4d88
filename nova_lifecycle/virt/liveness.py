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

"""Is the event path still moving? Said when it is not, and when it is again.

Two parts can stall without anything failing: libvirt's event loop (a
libvirt call that hangs inside it) and the dispatch pool (handlers that
never return, so events queue behind them). :class:`LivenessWatch` looks at
both every few seconds through the public status of the handler and the
event path: a loop that has not turned, or a dispatch queue that has not
emptied, for ``[lifecycle] stall_timeout`` seconds is stalled (one
WARNING); when it moves again, one INFO line and a resync of every
instance, since events may have come late or not at all meanwhile. Each
check also nudges libvirt's loop (a zero-delay libvirt timer), so a healthy
loop turns at every check even on a quiet host.
"""

import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

LIBVIRT_LOOP = 'libvirt event loop'
DISPATCH = 'dispatch pool'


class LivenessWatch:
    """Tracks the stalls of one driver's event path.

    :param handler: the driver's ``event_handler`` (``status()``,
        ``nudge()``).
    :param event_path: the driver's ``event_path`` (``status()``).
    :param on_recovered: called (on the watch's thread) when a stalled part
        moves again.
    """

    def __init__(self, handler, event_path, on_recovered,
                 clock=time.monotonic):
        self._handler = handler
        self._path = event_path
        self._on_recovered = on_recovered
        self._clock = clock
        self._queue_busy_since = None
        self._stalled = {LIBVIRT_LOOP: False, DISPATCH: False}

    def stalled(self):
        """{part: True while stalled}."""
        return dict(self._stalled)

    def check(self, stall_timeout):
        """Look once; log and resync on a change. Returns :meth:`stalled`."""
        now = self._clock()
        loop = self._handler.status()
        idle = loop['seconds since last turn']
        loop_stalled = loop['running'] and idle is not None and \
            idle > stall_timeout
        self._handler.nudge()
        queue = self._path.status().dispatch_queue
        if not queue:
            self._queue_busy_since = None
        elif self._queue_busy_since is None:
            self._queue_busy_since = now
        queue_stalled = (self._queue_busy_since is not None and
                         now - self._queue_busy_since > stall_timeout)
        self._update(LIBVIRT_LOOP, loop_stalled,
                     'libvirt\'s event loop has not turned for %.0fs (a '
                     'libvirt call may hang); lifecycle events wait' % (
                         idle or 0))
        self._update(DISPATCH, queue_stalled,
                     'the dispatch queue has not emptied for %.0fs (%d '
                     'events wait; handlers may hang)' % (
                         now - (self._queue_busy_since or now), queue))
        return self.stalled()

    def _update(self, part, stalled, why):
        if stalled == self._stalled[part]:
            return
        self._stalled[part] = stalled
        if stalled:
            LOG.warning('nova-lifecycle: %s stalled: %s.', part, why)
            return
        LOG.info('nova-lifecycle: %s moves again; resyncing the power '
                 'state of every instance.', part)
        self._on_recovered()


def run(watch, conf, stopping, interval):
    """The ``lifecycle-liveness`` job: a check every ``interval`` seconds."""
    while not stopping.wait(interval):
        if conf.stall_timeout:
            watch.check(conf.stall_timeout)
