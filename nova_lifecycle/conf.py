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

"""The ``[lifecycle]`` options: every option of the plugin, in one place.

``register_opts`` is called where the options are read; ``list_opts`` feeds
``oslo-config-generator`` through the ``oslo.config.opts`` entry point.
"""

from oslo_config import cfg

GROUP_NAME = 'lifecycle'

lifecycle_group = cfg.OptGroup(
    GROUP_NAME,
    title='Instance lifecycle event options',
    help="""
Options of the nova-lifecycle plugin, which carries libvirt domain lifecycle
events to the compute manager when ``[DEFAULT] compute_driver`` is
``nova_lifecycle.LibvirtLifecycleDriver``.
""")

lifecycle_opts = [
    cfg.FloatOpt(
        'stopped_event_delay',
        default=15.0,
        min=0.0,
        help="""
Seconds a STOPPED lifecycle event is held before it reaches the compute
manager.

A reboot makes libvirt send STOPPED and then STARTED for the same domain.
Holding STOPPED gives the following event time to arrive and cancel it, so
the manager does not stop an instance that is only rebooting. Any later
lifecycle event for the same instance cancels a held STOPPED. The default
matches the delay upstream Nova uses. 0 delivers STOPPED at once.
"""),
    cfg.BoolOpt(
        'fast_stopped_events',
        default=True,
        help="""
Hand an unexplained STOPPED event to the compute manager after
``stopped_event_grace`` instead of ``stopped_event_delay``.

A STOPPED event is unexplained when the driver is not operating on the
instance (no reboot, power-off, rescue, resize, migration, snapshot... in
progress) and libvirt says the guest shut itself down or crashed. Nova then
shows the instance SHUTOFF within the grace rather than after the full
delay. Before a held STOPPED is delivered the domain's live state is read
again and the event dropped if the domain runs. False restores upstream
Nova's behaviour: every STOPPED waits ``stopped_event_delay``.
"""),
    cfg.FloatOpt(
        'stopped_event_grace',
        default=1.0,
        min=0.0,
        max=15.0,
        help="""
Seconds an unexplained STOPPED event is held when ``fast_stopped_events``
is on; see that option. Also the time a STOPPED event that arrived during a
driver operation, or within ``stopped_event_delay`` after one that stops
domains ended, is held once the operation is over (then re-checked against
the live domain). The default leaves Nova time to show the instance SHUTOFF
within 2 seconds of the guest powering itself off.
"""),
    cfg.IntOpt(
        'dispatch_workers',
        default=16,
        min=1,
        help="""
Most lifecycle events handled at the same time.

Events of one instance are always handled one after the other, in the order
libvirt sent them; events of different instances are handled concurrently
by up to this many workers. The libvirt event loop never waits for them.
Handling an event mostly waits on the database and the conductor, so more
workers than cores pay off; each one may hold a database connection.
"""),
    cfg.IntOpt(
        'delivery_retries',
        default=5,
        min=0,
        help="""
Times a lifecycle event is handed to the compute manager again when its
handling failed because the message bus or the database could not be
reached (a timeout or a lost connection on the way to nova-conductor).

Without it such an event is lost, and Nova shows the instance in its old
power state until the next periodic power state sync (up to
``[DEFAULT] sync_power_state_interval`` later). A later event of the same
instance replaces the one waiting; nova-compute stopping drops it, and the
sync at the next start-up reconciles the instance. Other errors are not
retried. 0 turns retries off.
"""),
    cfg.FloatOpt(
        'delivery_retry_interval',
        default=2.0,
        min=0.1,
        help="""
Seconds before the first new attempt of ``delivery_retries``; each further
attempt waits twice as long as the one before (2, 4, 8, 16, 32 seconds
with the defaults).
"""),
    cfg.IntOpt(
        'stats_log_interval',
        default=0,
        min=0,
        help="""
Seconds between two INFO log lines with the plugin's event counters
(received, delivered, cancelled, failed, pending), the STOPPED events held
and the dispatch queue. 0 (the default) logs none. The same figures, with
the held instances and the plugin's threads, are always in the
"nova-lifecycle" section of nova-compute's Guru Meditation Report.
"""),
    cfg.IntOpt(
        'stall_timeout',
        default=60,
        min=0,
        help="""
Seconds libvirt's event loop may go without turning, or the dispatch queue
without emptying, before the plugin says it is stalled: one WARNING, shown
in the Guru Meditation section and the metrics. When it moves again, one
INFO line and a resync of every instance's power state. Checked every 5
seconds. 0 turns the check off.
"""),
    cfg.StrOpt(
        'metrics_textfile',
        default=None,
        help="""
File the plugin writes its Prometheus metrics to, in the text format, every
``metrics_interval`` seconds (atomically: a temporary file renamed over it).
Point it into node-exporter's ``--collector.textfile.directory``, with a
name ending in ``.prom``. Unset (the default): no metrics are written and
no thread is started for them. See the operations guide for the metrics
and example alerts.
"""),
    cfg.IntOpt(
        'metrics_interval',
        default=15,
        min=1,
        help="""
Seconds between two writes of ``metrics_textfile``.
"""),
]


def register_opts(conf):
    conf.register_group(lifecycle_group)
    conf.register_opts(lifecycle_opts, group=lifecycle_group)


def list_opts():
    return [(lifecycle_group, lifecycle_opts)]


CONF = cfg.CONF
register_opts(CONF)
