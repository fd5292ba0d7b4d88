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

"""What one scenario run on one driver produced.

Plain data, no Nova: the report, the plot and the exit status are built
from these.
"""

import dataclasses

PLUGIN = 'plugin'
UPSTREAM = 'upstream'
DRIVERS = (PLUGIN, UPSTREAM)

# The plugin's Prometheus textfile, in each run's log directory.
METRICS_FILE = 'plugin-metrics.prom'

# compute_driver for each side of the comparison.
COMPUTE_DRIVERS = {
    PLUGIN: 'nova_lifecycle.LibvirtLifecycleDriver',
    UPSTREAM: 'libvirt.LibvirtDriver',
}


@dataclasses.dataclass
class Result:
    """One scenario on one driver.

    ``latency`` is the time from the hypervisor change (the domain's new
    state) to the API showing the matching state, ``total`` the time from
    the API request that started it (None when nothing was requested, e.g.
    the guest powered off by itself). ``spurious`` counts the compute
    manager's stop()/force_stop() calls the scenario did not call for.
    ``steps`` holds (label, latency) of every measured change when there
    are several; ``latency`` is then the largest.
    """

    scenario: str
    title: str
    driver: str
    passed: bool
    reason: str = ''
    latency: float | None = None
    total: float | None = None
    spurious: int = 0
    steps: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class RunInfo:
    """Where the scenarios ran."""

    nova_version: str
    mode: str             # 'threading' or 'eventlet'
    hypervisor: str       # 'fake' or a libvirt URI
    settings: dict = dataclasses.field(default_factory=dict)
    # 'one-process' (Nova's functional fixtures) or 'services'.
    deployment: str = 'one-process'

    @property
    def nova_major(self):
        return self.nova_version.split('.')[0]

    def describe(self):
        where = ('nova\'s fake libvirt' if self.hypervisor == 'fake'
                 else 'libvirt %s (QEMU, TCG)' % self.hypervisor)
        if self.deployment == 'services':
            where = ('services of tools/services.sh (MariaDB, RabbitMQ, '
                     'Keystone), %s' % where)
        return 'nova %s, %s mode, %s' % (self.nova_version, self.mode, where)

    def as_dict(self):
        return dataclasses.asdict(self)


def failed(results, driver=PLUGIN):
    """The results of ``driver`` that did not pass."""
    return [r for r in results if r.driver == driver and not r.passed]
