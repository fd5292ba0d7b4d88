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

"""A burst of lifecycle events with a slow handler: plugin vs upstream.

    python benchmarks/event_burst.py [--events 1000] [--instances 100]
                                     [--handler-ms 20] [--repeats 3]

libvirt's loop thread is played by one native thread that fires the
libvirt lifecycle callback ``--events`` times as fast as it can, over
``--instances`` domains (PAUSED/RESUMED pairs, which neither side holds).
The compute manager's handler sleeps ``--handler-ms`` (a slow database).

Upstream: nova's ``Host`` in native-threading mode, whose event handler
calls the manager's handler on the loop thread itself. Plugin:
``virt.host.lifecycle_callback`` feeding an ``EventPath`` built as the
driver builds it, with the default ``[lifecycle] dispatch_workers``.
Measured per event: time from the burst's arrival to the handler's start
(p50, p99), and how long each callback held the loop thread (p99, max).
Medians over the repeats; ratios are upstream / plugin.
"""

import argparse
import os
import statistics
import threading
import time

os.environ['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = 'true'

from nova_lifecycle import concurrency  # noqa: E402

concurrency.patch_nova()

from nova.virt.libvirt import host as nova_host  # noqa: E402
from oslo_config import cfg  # noqa: E402

from nova_lifecycle import conf  # noqa: E402,F401 ([lifecycle] options)
from nova_lifecycle.eventpath import libvirt_events  # noqa: E402
from nova_lifecycle.eventpath import path as event_path  # noqa: E402
from nova_lifecycle.virt import host as lc_host  # noqa: E402

PAUSED = libvirt_events.DOMAIN_EVENT_SUSPENDED
RESUMED = libvirt_events.DOMAIN_EVENT_RESUMED


class Dom:
    def __init__(self, uuid):
        self._uuid = uuid

    def UUIDString(self):
        return self._uuid


class SlowHandler:
    """Records when each event's handling starts, then takes its time."""

    def __init__(self, cost, expected):
        self.cost = cost
        self.starts = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.expected = expected

    def __call__(self, event):
        started = time.monotonic()
        with self.lock:
            self.starts[id(event)] = started
            if len(self.starts) == self.expected:
                self.done.set()
        time.sleep(self.cost)
        return True


def fire(callback, opaque, doms, count):
    """Fire ``count`` callbacks on a native 'loop' thread.

    :returns: (burst start, seconds each callback held the loop thread)
    """
    held = []
    burst_start = time.monotonic()

    def loop():
        for i in range(count):
            dom = doms[i % len(doms)]
            kind = PAUSED if (i // len(doms)) % 2 == 0 else RESUMED
            start = time.monotonic()
            callback(None, dom, kind, 0, opaque)
            held.append(time.monotonic() - start)

    thread = threading.Thread(target=loop, name='fake-libvirt-loop')
    thread.start()
    thread.join()
    return burst_start, held


def percentile(values, fraction):
    values = sorted(values)
    return values[int(round(fraction * (len(values) - 1)))]


def latencies(handler, events_sent, burst_start):
    """Seconds from the burst's arrival to each handler's start.

    All events of a burst reach libvirt's socket at once; upstream only
    reads the next one once the handler of the previous one returned, so
    the time is counted from the burst, not from each callback.
    """
    return [handler.starts[id(e)] - burst_start for e in events_sent]


def run_upstream(args, doms):
    handler = SlowHandler(args.handler_ms / 1000.0, args.events)
    sent = []

    def lifecycle_handler(event):
        sent.append(event)
        handler(event)

    host = nova_host.Host('qemu:///system',
                          lifecycle_event_handler=None)
    # What upstream's Host does with an event in threading mode: straight
    # to the handler, on the thread that got it (no STOPPED here, so the
    # delaying wrapper is not involved).
    source = nova_host._ThreadingLibvirtEventHandler(
        None, lifecycle_handler)
    host._event_handler = source

    burst_start, held = fire(nova_host.Host._event_lifecycle_callback, host,
                             doms, args.events)
    handler.done.wait(600)
    return latencies(handler, sent, burst_start), held


def run_plugin(args, doms):
    handler = SlowHandler(args.handler_ms / 1000.0, args.events)
    sent = []

    def deliver(event):
        sent.append(event)
        return handler(event)

    # No STOPPED in the burst: the domains' live state is never read.
    path = event_path.EventPath(cfg.CONF.lifecycle, deliver,
                                lambda uuid: None, green=False)
    path.start()

    class Sink:
        """Stands for the Host's event handler (virt/host.py)."""
        translator = libvirt_events.EventTranslator()
        _queue_event = staticmethod(path.queue)

    class Opaque:
        """Stands for the Host the callback gets as opaque."""
        _event_handler = Sink

    burst_start, held = fire(lc_host.lifecycle_callback,
                             Opaque, doms, args.events)
    handler.done.wait(600)
    path.stop()
    return latencies(handler, sent, burst_start), held


def main(argv=None):
    """Runs the burst; returns {side: (p50, p99, held p99, held max)}."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--events', type=int, default=1000)
    parser.add_argument('--instances', type=int, default=100)
    parser.add_argument('--handler-ms', type=float, default=20.0)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--workers', type=int, default=None,
                        help='[lifecycle] dispatch_workers (default: the '
                             'option default)')
    args = parser.parse_args(argv)
    cfg.CONF([], project='nova')
    if args.workers:
        cfg.CONF.set_override('dispatch_workers', args.workers, 'lifecycle')
    doms = [Dom('00000000-0000-0000-0000-%012d' % i)
            for i in range(args.instances)]
    rows = {}
    for name, run in (('upstream Host (threading)', run_upstream),
                      ('plugin pipeline', run_plugin)):
        p50s, p99s, held_p99, held_max = [], [], [], []
        for _ in range(args.repeats):
            lat, held = run(args, doms)
            p50s.append(percentile(lat, 0.50))
            p99s.append(percentile(lat, 0.99))
            held_p99.append(percentile(held, 0.99))
            held_max.append(max(held))
        rows[name] = (statistics.median(p50s), statistics.median(p99s),
                      statistics.median(held_p99),
                      statistics.median(held_max))
    print('%d events over %d instances, handler %.0f ms, dispatch_workers '
          '%d; medians of %d runs' % (
              args.events, args.instances, args.handler_ms,
              cfg.CONF.lifecycle.dispatch_workers, args.repeats))
    print('%-28s %9s %9s %19s %19s' % (
        '', 'p50 s', 'p99 s', 'loop held p99 ms', 'loop held max ms'))
    for name, (p50, p99, held99, held) in rows.items():
        print('%-28s %9.3f %9.3f %19.3f %19.3f' % (
            name, p50, p99, held99 * 1000, held * 1000))
    up, plugin = rows['upstream Host (threading)'], rows['plugin pipeline']
    print('ratio upstream/plugin: p50 %.1fx, p99 %.1fx; loop thread held '
          'per callback, p99 %.0fx' % (
              up[0] / plugin[0], up[1] / plugin[1], up[2] / plugin[2]))
    return rows


if __name__ == '__main__':
    main()
