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

"""The main job on the deployment of ``tools/services.sh``.

``python -m mainjob --deployment services``, run with the deployment's
virtualenv's python from the top of the checkout, once ``tools/services.sh
up`` ran. For each driver nova-compute is restarted on it
(``services.sh compute-driver``, with ``shutdown_timeout = 3`` and the
plugin's metrics textfile in the log directory); the scenarios run through
the REST API (:mod:`mainjob.services_env`); then the servers are deleted.
At the end nova-compute is back on the plugin with no extra option. The
runner, the table and the plot are those of the in-process modes.
"""

import os
import re
import time
import traceback

from mainjob import results
from mainjob import services_api
from mainjob import services_env

# [DEFAULT] options of nova-compute for the scenarios: as the in-process
# modes, a guest that ignores ACPI is destroyed after 3 s; the start-up
# power-state sync runs at the compute's start, not at a random moment up
# to 60 s later in the middle of a scenario (the next one is 600 s later:
# the scenarios see the event path only).
COMPUTE_OPTIONS = {'shutdown_timeout': '3', 'periodic_fuzzy_delay': '0'}
SCRIPT_LOG = 'services-sh.log'


class Outcome:
    """What :meth:`ServicesDeployment.run` reports to the runner."""

    def __init__(self):
        self.errors = []
        self.failures = []


class ServicesDeployment:
    """One driver's run on the deployment, as the runner expects a case."""

    def __init__(self, driver, body, log_path=None, directory=None,
                 api=None):
        self.driver_kind = driver
        self._body = body
        self._log_path = log_path
        self._dir = directory
        self._api = api
        self._teardown_problems = []
        self.env = None

    def id(self):
        return 'mainjob.services.%s' % self.driver_kind

    @staticmethod
    def new_outcome():
        return Outcome()

    def _log_dir(self):
        return os.path.dirname(os.path.abspath(self._log_path or
                                               os.path.join('.', 'x')))

    def run(self, outcome):
        log_dir = self._log_dir()
        os.makedirs(log_dir, exist_ok=True)
        metrics = os.path.join(log_dir, results.METRICS_FILE)
        script_log = os.path.join(log_dir, SCRIPT_LOG)
        log_start = compute_log_size(self._dir)
        try:
            services_api.services_sh(
                self._dir, ['compute-driver', self.driver_kind] +
                services_api.compute_options(COMPUTE_OPTIONS),
                script_log, services_env.metrics_env(metrics))
            self.env = services_env.ServicesEnvironment(
                self._api, self.driver_kind, self._dir, COMPUTE_OPTIONS,
                metrics, script_log)
            self._body(self.env)
        except Exception:
            outcome.errors.append((self, traceback.format_exc()))
        finally:
            self._teardown()
            self._save_compute_log(log_start)

    def _teardown(self):
        env = self.env
        if env is None:
            return
        try:
            if not env.compute_running:
                env.start_service('nova-compute')
            env.delete_servers()
        except Exception as exc:
            self._teardown_problems.append(
                'deleting the servers failed: %s' % exc)
        self._teardown_problems.extend(env.hv.cleanup())

    def _save_compute_log(self, start):
        """nova-compute's log lines of this driver's run, beside the rest."""
        if not self._log_path:
            return
        path = compute_log(self._dir)
        try:
            with open(path, errors='replace') as f:
                f.seek(start)
                text = f.read()
        except OSError:
            return
        with open(self._log_path, 'w') as f:
            f.write(text)


def compute_log(directory):
    return os.path.join(directory, 'log', 'nova-compute.log')


def compute_log_size(directory):
    try:
        return os.path.getsize(compute_log(directory))
    except OSError:
        return 0


def concurrency_mode(directory):
    """What nova-compute logged at its last start: threading or eventlet."""
    try:
        with open(compute_log(directory), errors='replace') as f:
            text = f.read()
    except OSError:
        return 'unknown'
    last = text.rsplit('started by tools/services.sh', 1)[-1]
    if 'oslo_service.backend._threading' in last:
        return 'threading'
    if re.search('[Ee]ventlet', last):
        return 'eventlet'
    return 'threading'


def factory(directory, api):
    def make(driver, body, log_path=None):
        return ServicesDeployment(driver, body, log_path, directory, api)
    return make


def restore(directory, log_dir, progress):
    """nova-compute back on the plugin, without the job's options."""
    started = time.monotonic()
    try:
        services_api.services_sh(directory, ['compute-driver', 'plugin'],
                                 os.path.join(log_dir, SCRIPT_LOG))
    except Exception as exc:
        progress.line('nova-compute NOT restored on the plugin: %s' % exc)
        return False
    progress.line('nova-compute back on the plugin (%.1f s)'
                  % (time.monotonic() - started))
    return True
