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

"""A named background thread that runs one job on demand.

``trigger`` starts the job unless it is running; a trigger that comes while
it runs makes it run once more afterwards, so nothing asked for is missed
and at most one copy runs. ``stop`` asks the job to end (it receives an
Event to watch) and waits for the thread. Knows nothing of Nova.
"""

import threading

from oslo_log import log as logging

LOG = logging.getLogger(__name__)


class SingleRunner:

    def __init__(self, job, name):
        self._job = job
        self._name = name
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = None
        self._again = False

    def trigger(self):
        """Run the job soon; False once the runner is stopped."""
        with self._lock:
            if self._stopping.is_set():
                return False
            if self._thread is not None:
                self._again = True
                return True
            self._thread = threading.Thread(target=self._run,
                                            name=self._name, daemon=True)
            self._thread.start()
            return True

    @property
    def name(self):
        return self._name

    def is_running(self):
        with self._lock:
            return self._thread is not None

    def stop(self, timeout=None):
        """Ask the job to end and wait for it; True once it has."""
        self._stopping.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _run(self):
        while True:
            try:
                self._job(self._stopping)
            except Exception:
                LOG.exception('%s failed', self._name)
            with self._lock:
                if not self._again or self._stopping.is_set():
                    self._thread = None
                    return
                self._again = False
