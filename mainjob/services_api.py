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

"""Nova's REST API of the services deployment, and ``tools/services.sh``.

:class:`Api` sends requests through openstacksdk's session (the admin of
the deployment's ``clouds.yaml``, the latest microversion) and retries a
request that fails on the server's side (5xx, no answer) until a deadline:
while MariaDB or RabbitMQ restarts, the API and Keystone fail for a while.
:func:`services_sh` runs the deployment's script. No Nova is imported.
"""

import os
import re
import subprocess
import time

from mainjob import domains
from mainjob import scenarios

SCRIPT = os.path.join(domains.TOP, 'tools', 'services.sh')
DEFAULT_DIR = '/var/lib/nova-lifecycle-services'
CLOUD = 'nova-lifecycle'
HEADERS = {'OpenStack-API-Version': 'compute latest',
           'X-OpenStack-Nova-API-Version': 'latest'}
# Seconds a request may keep failing on the server's side.
RETRY_WAIT = 60.0
# What the script may take for one command (a compute restart: its
# graceful stop, up to 30 s, then its start and first report).
SCRIPT_TIMEOUT = 300
# nova's power_state values (nova.compute.power_state) by domain state.
POWER_STATES = {1: 'running', 3: 'paused', 4: 'shutoff', 6: 'shutoff',
                7: 'paused', 0: 'gone'}
# The API's status for each domain state, once nothing is in progress.
STATUS_FOR = {'running': 'ACTIVE', 'paused': 'PAUSED', 'shutoff': 'SHUTOFF'}


def state_dir():
    """The deployment's state directory, as the script chooses it."""
    return os.path.realpath(os.environ.get('NOVA_LIFECYCLE_SERVICES_DIR',
                                           DEFAULT_DIR))


def problem(directory):
    """Why the deployment of ``directory`` cannot be used, or None."""
    if os.geteuid() != 0:
        return 'must run as root (it stops and starts services)'
    if not os.path.isfile(os.path.join(directory, 'clouds.yaml')):
        return ('%s has no clouds.yaml: run tools/services.sh up first'
                % directory)
    done = subprocess.run([SCRIPT, 'status'], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=script_env(directory))
    if done.returncode != 0:
        stopped = re.findall(r'^(\S+)\s+-\s+stopped', done.stdout, re.M)
        return ('not every service runs (stopped: %s): tools/services.sh '
                'up' % (', '.join(stopped) or 'see tools/services.sh '
                        'status'))
    return None


def script_env(directory, extra=None):
    env = dict(os.environ, NOVA_LIFECYCLE_SERVICES_DIR=directory)
    env.update(extra or {})
    return env


def services_sh(directory, args, log=None, extra_env=None):
    """Run ``tools/services.sh ARGS``; its output, or ScenarioFailed."""
    done = subprocess.run([SCRIPT] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env=script_env(directory, extra_env),
                          timeout=SCRIPT_TIMEOUT)
    if log is not None:
        with open(log, 'a') as f:
            f.write('$ tools/services.sh %s\n%s'
                    % (' '.join(args), done.stdout))
    if done.returncode != 0:
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        raise scenarios.ScenarioFailed(
            'tools/services.sh %s failed: %s'
            % (' '.join(args), ' / '.join(lines[-3:])))
    return done.stdout


def compute_options(options):
    """OPTION=VALUE words for ``services.sh compute-driver``, sorted."""
    return ['%s=%s' % item for item in sorted(options.items())]


def matches(server, domain_state):
    """Why the API's view of a server differs from libvirt's, or None.

    ``server`` is the API's server; ``domain_state`` the watcher's
    ('running', 'paused', 'shutoff' or 'gone').
    """
    task = server.get('OS-EXT-STS:task_state')
    if task is not None:
        return 'task %s' % task
    power = POWER_STATES.get(server.get('OS-EXT-STS:power_state'), 'other')
    if domain_state == 'gone':
        domain_state = 'shutoff'
    problems = []
    if power != domain_state:
        problems.append('power state %s, libvirt %s' % (power, domain_state))
    if server['status'] != STATUS_FOR.get(domain_state):
        problems.append('status %s, libvirt %s'
                        % (server['status'], domain_state))
    return '; '.join(problems) or None


def parse_metrics(text):
    """The plugin's textfile as counts like its event path's ledger."""
    counts = {'received': 0, 'delivered': 0, 'cancelled': 0, 'failed': 0,
              'pending': 0, 'failed_by_error': {}}
    for line in text.splitlines():
        found = re.match(r'^nova_lifecycle_(events_\w+?)(?:_total)?'
                         r'(\{[^}]*\})?\s+(\S+)$', line)
        if not found:
            continue
        name, labels, value = found.groups()
        value = int(float(value))
        if name == 'events_received':
            counts['received'] = value
        elif name == 'events_pending':
            counts['pending'] = value
        elif name == 'events_ended':
            outcome = re.search(r'outcome="(\w+)"', labels or '')
            reason = re.search(r'reason="([^"]*)"', labels or '')
            if outcome and outcome.group(1) in counts:
                counts[outcome.group(1)] += value
                if outcome.group(1) == 'failed':
                    counts['failed_by_error'][reason.group(1)] = value
    return counts


def ledger_problems(counts, tolerated=None):
    """What is wrong with the plugin's ledger, as in the in-process modes.

    ``tolerated``: failed events by error that an outage explained.
    """
    problems = []
    if counts['received'] != (counts['delivered'] + counts['cancelled'] +
                              counts['failed'] + counts['pending']):
        problems.append('ledger does not balance: %s' % counts)
    tolerated = tolerated or {}
    failed = {error: number - tolerated.get(error, 0)
              for error, number in counts['failed_by_error'].items()
              if number > tolerated.get(error, 0)}
    if failed:
        problems.append('events failed: %s' % failed)
    return problems


class Api:
    """Nova's API as the deployment's admin."""

    def __init__(self, directory):
        os.environ['OS_CLIENT_CONFIG_FILE'] = os.path.join(directory,
                                                           'clouds.yaml')
        import openstack
        self.conn = openstack.connect(cloud=CLOUD)
        self.compute = self.conn.compute

    def request(self, method, url, body=None, wait=RETRY_WAIT):
        """The response, after retrying server-side failures for ``wait``."""
        deadline = time.monotonic() + wait
        while True:
            error = None
            try:
                response = self.compute.request(url, method, json=body,
                                                headers=HEADERS)
                if response.status_code < 500:
                    return response
                error = '%s %s' % (response.status_code,
                                   response.text[:200])
            except Exception as exc:
                # No answer, or no token (Keystone on its database).
                error = '%s: %s' % (type(exc).__name__, exc)
            if time.monotonic() >= deadline:
                raise scenarios.ScenarioFailed('%s %s: %s'
                                               % (method, url, error))
            time.sleep(0.5)

    def _json(self, method, url, body=None, expect=(200, 202)):
        response = self.request(method, url, body)
        if response.status_code not in expect:
            raise scenarios.ScenarioFailed('%s %s: %s %s' % (
                method, url, response.status_code, response.text[:300]))
        return response.json() if response.text else {}

    def get_server(self, server_id):
        """The server, or None once it is gone."""
        response = self.request('GET', '/servers/%s' % server_id)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise scenarios.ScenarioFailed('GET server: %s %s' % (
                response.status_code, response.text[:300]))
        return response.json()['server']

    def create_server(self, name, image, flavor):
        return self._json('POST', '/servers', {'server': {
            'name': name, 'imageRef': image, 'flavorRef': flavor,
            'networks': 'none'}})['server']

    def action(self, server_id, body):
        self._json('POST', '/servers/%s/action' % server_id, body,
                   expect=(202, 200))

    def delete_server(self, server_id):
        response = self.request('DELETE', '/servers/%s' % server_id)
        if response.status_code not in (204, 404):
            raise scenarios.ScenarioFailed('DELETE server: %s %s' % (
                response.status_code, response.text[:300]))

    def actions(self, server_id):
        """The server's instance actions (none once it is gone)."""
        response = self.request('GET', '/servers/%s/os-instance-actions'
                                % server_id)
        if response.status_code == 404:
            return []
        return response.json()['instanceActions']

    def action_events(self, server_id, request_id):
        return self._json('GET', '/servers/%s/os-instance-actions/%s' % (
            server_id, request_id))['instanceAction'].get('events', [])

    def compute_services(self):
        return self._json('GET', '/os-services?binary=nova-compute')[
            'services']

    def services(self):
        return self._json('GET', '/os-services')['services']

    def flavor_id(self, name):
        for flavor in self._json('GET', '/flavors')['flavors']:
            if flavor['name'] == name:
                return flavor['id']
        raise scenarios.ScenarioFailed('no flavor %s: tools/services.sh up'
                                       % name)
