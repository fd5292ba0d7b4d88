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

"""The main job's services mode, without the deployment.

Its arguments, the pure logic of the adapter (the API's view against
libvirt's, the plugin's textfile, instance actions), the runner with a
case that brings its own outcome, and the failure scenarios' order of
events with a stand-in environment.
"""

import io
import os
import time

import fixtures

from mainjob import cli
from mainjob import results
from mainjob import runner
from mainjob import scenarios
from mainjob import services
from mainjob import services_api
from mainjob import services_env
from nova_lifecycle.tests import base

PLUGIN, UPSTREAM = results.PLUGIN, results.UPSTREAM
SERVICES_ONLY = ('compute-sigterm', 'rabbitmq-restart', 'mariadb-restart')

TEXTFILE = '\n'.join([
    '# TYPE nova_lifecycle_events_received_total counter',
    'nova_lifecycle_events_received_total 7.0',
    'nova_lifecycle_events_received_created 1.7e+09',
    'nova_lifecycle_events_ended_total{outcome="delivered",reason=""} 4.0',
    'nova_lifecycle_events_ended_total{outcome="cancelled",'
    'reason="superseded"} 1.0',
    'nova_lifecycle_events_ended_total{outcome="failed",'
    'reason="MessagingTimeout"} 1.0',
    'nova_lifecycle_events_pending 1.0',
    'nova_lifecycle_held_stopped_events 1.0',
    ''])


def server(status, power, task=None):
    return {'status': status, 'OS-EXT-STS:power_state': power,
            'OS-EXT-STS:task_state': task}


class ServicesCliTest(base.TestCase):

    def parse_error(self, argv):
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        exc = self.assertRaises(SystemExit, cli.parse_args, argv)
        self.assertEqual(2, exc.code)
        stderr.seek(0)
        return stderr.read()

    def test_services_mode_runs_every_scenario(self):
        options = cli.parse_args(['--deployment', 'services'])
        self.assertTrue(options.services)
        self.assertEqual('services', options.kind)
        self.assertEqual(list(scenarios.SCENARIOS), options.selected)
        # The compute's stop comes last, after the outages.
        self.assertEqual('graceful-shutdown', options.selected[-1].name)

    def test_one_process_leaves_the_services_only_scenarios_out(self):
        names = [s.name for s in cli.parse_args([]).selected]
        for name in SERVICES_ONLY:
            self.assertNotIn(name, names)
        self.assertIn('only with --deployment services',
                      self.parse_error(['--scenarios', 'rabbitmq-restart']))

    def test_services_refuses_a_libvirt_uri(self):
        self.assertIn('--libvirt-uri', self.parse_error(
            ['--deployment', 'services', '--libvirt-uri', 'qemu:///system']))

    def test_unknown_deployment(self):
        self.assertIn('invalid choice',
                      self.parse_error(['--deployment', 'devstack']))

    def test_services_dir_from_the_environment(self):
        self.useFixture(fixtures.EnvironmentVariable(
            'NOVA_LIFECYCLE_SERVICES_DIR', '/tmp/elsewhere'))
        options = cli.parse_args(['--deployment', 'services'])
        self.assertEqual('/tmp/elsewhere', options.services_dir)

    def test_default_services_dir_is_the_scripts(self):
        self.assertEqual(services_api.DEFAULT_DIR, cli.DEFAULT_SERVICES_DIR)

    def test_each_services_run_keeps_its_own_files(self):
        self.assertEqual('p-nova34-threading-services.png',
                         cli.per_run_path('p.png', '34', 'threading',
                                          'services'))
        self.assertEqual(
            os.path.join('build', 'mainjob', 'logs-nova34-threading-'
                         'services'),
            cli.default_log_dir('34', 'threading', 'services'))

    def test_list_marks_the_services_only_scenarios(self):
        out = io.StringIO()
        self.assertEqual(0, cli.main(['--list-scenarios'], stdout=out))
        marked = [line.split()[0] for line in out.getvalue().splitlines()
                  if 'services only' in line]
        self.assertEqual(list(SERVICES_ONLY), marked)

    def test_the_run_says_where_it_ran(self):
        info = results.RunInfo('34.0.0', 'threading', 'qemu:///system',
                               deployment='services')
        self.assertIn('tools/services.sh', info.describe())
        self.assertEqual('services', info.as_dict()['deployment'])


class ServicesApiTest(base.TestCase):

    def test_matching_states(self):
        self.assertIsNone(services_api.matches(server('ACTIVE', 1),
                                               'running'))
        self.assertIsNone(services_api.matches(server('PAUSED', 3),
                                               'paused'))
        # An undefined domain is off.
        self.assertIsNone(services_api.matches(server('SHUTOFF', 4),
                                               'gone'))

    def test_a_task_in_progress_never_matches(self):
        self.assertEqual('task powering-off', services_api.matches(
            server('ACTIVE', 1, 'powering-off'), 'running'))

    def test_power_state_and_status_are_both_checked(self):
        why = services_api.matches(server('ACTIVE', 1), 'shutoff')
        self.assertIn('power state running, libvirt shutoff', why)
        self.assertIn('status ACTIVE', why)
        # The sync updated the power state, not yet the status.
        self.assertEqual('status ACTIVE, libvirt shutoff',
                         services_api.matches(server('ACTIVE', 4),
                                              'shutoff'))

    def test_textfile_as_the_ledger(self):
        counts = services_api.parse_metrics(TEXTFILE)
        self.assertEqual({'received': 7, 'delivered': 4, 'cancelled': 1,
                          'failed': 1, 'pending': 1,
                          'failed_by_error': {'MessagingTimeout': 1}},
                         counts)

    def test_ledger_problems(self):
        counts = services_api.parse_metrics(TEXTFILE)
        self.assertEqual(["events failed: {'MessagingTimeout': 1}"],
                         services_api.ledger_problems(counts))
        # Failures an outage explained are not counted again.
        self.assertEqual([], services_api.ledger_problems(
            counts, {'MessagingTimeout': 1}))
        counts['received'] += 1
        self.assertIn('ledger does not balance',
                      services_api.ledger_problems(counts)[0])

    def test_compute_options_are_words_of_the_script(self):
        self.assertEqual(['shutdown_timeout=3',
                          'sync_power_state_interval=5'],
                         services_api.compute_options(
                             {'sync_power_state_interval': 5,
                              'shutdown_timeout': '3'}))

    def test_metrics_variables_for_the_script(self):
        self.assertEqual(
            {'NOVA_LIFECYCLE_METRICS_TEXTFILE': '/x/plugin-metrics.prom',
             'NOVA_LIFECYCLE_METRICS_INTERVAL': '1'},
            services_env.metrics_env('/x/plugin-metrics.prom'))

    def test_settings_follow_the_compute_options(self):
        shown = services_env.settings({'shutdown_timeout': '3'})
        self.assertEqual(3, shown['shutdown_timeout'])
        self.assertEqual(600, shown['sync_power_state_interval'])
        self.assertEqual(15.0, shown['stopped_event_delay'])

    def test_concurrency_mode_of_the_last_start(self):
        top = self.useFixture(fixtures.TempDir()).path
        os.makedirs(os.path.join(top, 'log'))
        with open(services.compute_log(top), 'w') as f:
            f.write('==== x started by tools/services.sh\nEventlet based\n'
                    '==== y started by tools/services.sh\n'
                    'INFO oslo_service.backend._threading.service start\n')
        self.assertEqual('threading', services.concurrency_mode(top))


class StandInApi:
    """The API calls the adapter makes, answered from dicts."""

    def __init__(self):
        self.servers = {}
        self.instance_actions = {}
        self.events = {}

    def get_server(self, server_id):
        return self.servers.get(server_id)

    def actions(self, server_id):
        return self.instance_actions.get(server_id, [])

    def action_events(self, server_id, request_id):
        return self.events.get(request_id, [])


class StandInHv:

    def __init__(self):
        self.states = {}

    def state(self, server):
        return self.states[server['id']]


class AdapterTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.api = StandInApi()
        # The adapter without its constructor (no deployment to reach).
        self.env = services_env.ServicesEnvironment.__new__(
            services_env.ServicesEnvironment)
        self.env.api = self.api
        self.env.hv = StandInHv()
        self.env.driver = PLUGIN
        self.env.compute_running = True
        self.env._tolerated = {}
        self.env.metrics_path = os.path.join(
            self.useFixture(fixtures.TempDir()).path, 'metrics.prom')

    def test_manager_calls_are_stops_without_a_user(self):
        self.api.instance_actions['a'] = [
            {'action': 'create', 'user_id': 'admin', 'request_id': 'r1'},
            {'action': 'stop', 'user_id': 'admin', 'request_id': 'r2'},
            {'action': 'stop', 'user_id': None, 'request_id': 'r3'}]
        self.assertEqual(1, self.env.manager_calls('a'))
        self.assertEqual(0, self.env.manager_calls('gone'))

    def test_mismatches(self):
        self.api.servers = {'a': server('ACTIVE', 1),
                            'b': server('ACTIVE', 1, 'pausing')}
        self.env.hv.states = {'a': 'running', 'b': 'paused', 'c': 'gone'}
        found = self.env.mismatches([{'id': 'a'}, {'id': 'b'}, {'id': 'c'}])
        self.assertEqual({'b': 'task pausing', 'c': 'gone from the API'},
                         found)

    def test_wait_consistent_names_what_disagrees(self):
        self.api.servers = {'abcdef0123': server('ACTIVE', 1)}
        self.env.hv.states = {'abcdef0123': 'shutoff'}
        exc = self.assertRaises(scenarios.ScenarioFailed,
                                self.env.wait_consistent,
                                [{'id': 'abcdef0123'}], 0)
        self.assertIn('abcdef01: power state running', str(exc))

    def test_power_off_entered_on_the_compute_event(self):
        self.env.last_acted = {'id': 'a'}
        self.api.instance_actions['a'] = [
            {'action': 'stop', 'user_id': 'admin', 'request_id': 'r2'}]
        entered = self.env.watch_power_off()
        self.assertFalse(entered.wait(0))
        self.api.events['r2'] = [{'event': 'compute_stop_instance'}]
        self.assertTrue(entered.wait(1))

    def test_plugin_problems_from_the_textfile(self):
        self.assertIn('no metrics textfile', self.env.plugin_problems()[0])
        with open(self.env.metrics_path, 'w') as f:
            f.write(TEXTFILE)
        self.assertEqual(["events failed: {'MessagingTimeout': 1}"],
                         self.env.plugin_problems())
        self.assertEqual(1, self.env.accept_event_failures())
        self.assertEqual([], self.env.plugin_problems())
        self.env.driver = UPSTREAM
        self.env._tolerated = {}
        self.assertEqual([], self.env.plugin_problems())

    def test_a_stopped_compute_is_checked_only_on_its_last_textfile(self):
        with open(self.env.metrics_path, 'w') as f:
            f.write(TEXTFILE)
        self.env.compute_running = False
        self.assertEqual([], self.env.plugin_problems())
        self.assertEqual(1, len(self.env.plugin_problems(final=True)))

    def test_a_stale_textfile_is_not_read(self):
        with open(self.env.metrics_path, 'w') as f:
            f.write(TEXTFILE)
        self.assertIsNone(self.env.metrics(since=time.time() + 60))
        self.assertEqual(1, self.env.metrics()['pending'])


class OwnOutcomeCase:
    """A case as the services deployment is: no testtools."""

    def __init__(self, driver, body, log_path):
        self._body = body
        self._teardown_problems = []

    @staticmethod
    def new_outcome():
        return services.Outcome()

    def run(self, outcome):
        outcome.errors.append((self, 'Traceback...\nRuntimeError: no API'))


class RunnerOutcomeTest(base.TestCase):

    def test_a_case_with_its_own_outcome(self):
        out = io.StringIO()
        selected = [scenarios.SCENARIOS[0]]
        found, _ = runner.run([PLUGIN], selected, OwnOutcomeCase,
                              runner.Progress(out))
        self.assertEqual(1, len(found))
        self.assertFalse(found[0].passed)
        self.assertIn('RuntimeError: no API', found[0].reason)


class OutageEnv:
    """What the outage helper asks of the environment."""

    def __init__(self, powered_off_at):
        self.clock = 100.0
        self.powered_off_at = powered_off_at
        self.calls = []
        self.hv = self

    def now(self):
        self.clock += 1.0
        return self.clock

    def stop_service(self, name):
        self.calls.append('stop ' + name)

    def start_service(self, name):
        self.calls.append('start ' + name)

    def guest(self, server):
        return scenarios.Guest(poweroff_after=8)

    def wait_state(self, server, state, after, timeout):
        self.calls.append('wait %s' % state)
        return self.powered_off_at


class OutageScenarioTest(base.TestCase):

    def test_the_service_comes_back_after_the_power_off(self):
        env = OutageEnv(powered_off_at=110.0)
        m = scenarios.Measure()
        changed = scenarios._outage_during_power_off(
            env, m, {'id': 'a'}, 'rabbitmq',
            then=lambda when: env.calls.append('then %.0f' % when))
        self.assertEqual(110.0, changed)
        self.assertEqual(['stop rabbitmq', 'wait shutoff', 'then 110',
                          'start rabbitmq'], env.calls)
        self.assertIn('rabbitmq down', m.notes[0])

    def test_a_power_off_before_the_outage_fails_and_restarts(self):
        env = OutageEnv(powered_off_at=50.0)
        exc = self.assertRaises(
            scenarios.ScenarioFailed, scenarios._outage_during_power_off,
            env, scenarios.Measure(), {'id': 'a'}, 'mariadb')
        self.assertIn('before mariadb was stopped', str(exc))
        # The service is started again whatever happened.
        self.assertEqual('start mariadb', env.calls[-1])
