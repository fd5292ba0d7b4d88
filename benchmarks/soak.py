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

"""Soak: the event path under sustained load, watched for growth.

    python benchmarks/soak.py [--duration 600] [--instances 500]
        [--rate 50] [--handler-ms-min 5] [--handler-ms-max 50] [--seed 1]
        [--interval 10] [--warmup SECONDS] [--rss-margin-mib 8]
        [--rss-margin-pct 5]

The concurrency mode is Nova's: native threads, unless
``OS_NOVA_DISABLE_EVENTLET_PATCHING=false`` selects eventlet.

One native thread plays libvirt's event loop. ``--rate`` times a second it
calls the plugin's lifecycle callback (``virt.host.lifecycle_callback``,
the one libvirt calls) for one of ``--instances`` domains living a random life:
paused and unpaused, hard-rebooted (STOPPED_DESTROYED then STARTED),
powered off by the guest (SHUTDOWN_GUEST, STOPPED_SHUTDOWN) and started
again, crashed. The events go through the plugin's ``EventPath``, built
as the driver builds it (the ``[lifecycle]`` options: STOPPED hold, grace
and re-check against the domain's live state, ``dispatch_workers``), to a
handler that takes a random ``--handler-ms-min`` to ``--handler-ms-max``
ms, as the compute manager's database work would.

Every ``--interval`` seconds it prints: events sent (callbacks that are
events), received, delivered, cancelled, failed, pending, STOPPED held, the
dispatch queue; the latency from the callback to the handler's start (p50,
p99, max; for a held STOPPED, beyond its hold); RSS now and peak; OS
threads and the plugin's threads; event objects still referenced (after a
garbage collection).

It exits with status 1, naming the check, when:

* identity: at some sample received != delivered + cancelled + failed +
  pending, or after the stop something is pending or received != sent;
* threads: the most OS threads seen exceeds the threads before start plus
  ``dispatch_workers`` (native mode) plus 2 (libvirt's loop, the delayed
  scheduler); or a plugin thread is left after the stop;
* memory: after ``--warmup`` (default: the STOPPED delay + 5 s, at least a
  sixth of the run), the median RSS of the last third exceeds that of the
  first third by more than ``--rss-margin-mib`` MiB or
  ``--rss-margin-pct`` %, whichever is larger;
* live events: after the warm-up, the most event objects still referenced
  (counted every 5 s after a garbage collection) in the last third of the
  counts exceeds 1.5 times the most in the first third plus 50: events
  kept somewhere.
"""

import argparse
import collections
import gc
import math
import os
import random
import statistics
import sys
import threading
import time
import weakref

os.environ.setdefault('OS_NOVA_DISABLE_EVENTLET_PATCHING', 'true')

from nova_lifecycle import concurrency  # noqa: E402

concurrency.patch_nova()

from oslo_config import cfg  # noqa: E402

from nova_lifecycle import conf  # noqa: E402,F401 ([lifecycle] options)
from nova_lifecycle.eventpath import holds  # noqa: E402
from nova_lifecycle.eventpath import libvirt_events as events  # noqa: E402
from nova_lifecycle.eventpath import operations  # noqa: E402
from nova_lifecycle.eventpath import path as event_path  # noqa: E402
from nova_lifecycle.eventpath import policy  # noqa: E402
from nova_lifecycle.virt import host as lc_host  # noqa: E402

# libvirt domain states the re-check reads.
RUNNING, PAUSED, SHUTOFF = 1, 3, 5
MIB = 1024 * 1024
# Every this many one-second samples, count the live event objects (after a
# full garbage collection, which pauses the process for a moment).
LIVE_EVERY = 5


def proc_status():
    """RSS and peak RSS in bytes, and OS threads, from /proc/self/status."""
    fields = {}
    with open('/proc/self/status') as status:
        for line in status:
            key, _, value = line.partition(':')
            fields[key] = value.split()
    return (int(fields['VmRSS'][0]) * 1024, int(fields['VmHWM'][0]) * 1024,
            int(fields['Threads'][0]))


def identity(counts):
    """received == delivered + cancelled + failed + pending."""
    return counts['received'] == (counts['delivered'] + counts['cancelled'] +
                                  counts['failed'] + counts['pending'])


def balanced(counts):
    """Every event received counted exactly once: no entry ended twice."""
    return identity(counts) and not counts['double_ends']


def percentile(values, fraction):
    if not values:
        return float('nan')
    values = sorted(values)
    return values[int(round(fraction * (len(values) - 1)))]


class Histogram:
    """Latencies of the whole run in fixed memory: 1 % wide buckets.

    Keeping every value would make the benchmark's own memory grow with
    the run, which the memory check would then see.
    """

    FLOOR = 1e-5    # seconds; anything shorter counts as this
    STEP = math.log(1.01)

    def __init__(self):
        self.counts = collections.Counter()
        self.count = 0
        self.max = float('nan')

    def add_all(self, values):
        for value in values:
            self.counts[int(math.log(max(value, self.FLOOR) / self.FLOOR) /
                            self.STEP)] += 1
        if values:
            self.count += len(values)
            top = max(values)
            self.max = top if self.max != self.max else max(self.max, top)

    def percentile(self, fraction):
        """Upper edge of the bucket holding that fraction of the values."""
        if not self.count:
            return float('nan')
        rank = fraction * (self.count - 1)
        seen = 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen > rank:
                return self.FLOOR * math.exp((bucket + 1) * self.STEP)
        return self.max


class Domain:
    """What libvirt hands the callback: only the UUID is read."""

    def __init__(self, uuid):
        self._uuid = uuid

    def UUIDString(self):
        return self._uuid


class Guests:
    """The instances' lives, as the callbacks libvirt would send.

    Only the loop thread changes states; the re-check reads them.
    """

    def __init__(self, count, rng):
        self.rng = rng
        self.domains = [Domain('%08x-0000-4000-8000-%012x' % (i, i))
                        for i in range(count)]
        self.state = {d.UUIDString(): RUNNING for d in self.domains}
        self.script = collections.deque()

    def next_callback(self):
        """(domain, event type, detail) of the next callback."""
        if not self.script:
            self._next_action()
        domain, event_type, detail, state = self.script.popleft()
        if state is not None:
            self.state[domain.UUIDString()] = state
        return domain, event_type, detail

    def _next_action(self):
        domain = self.rng.choice(self.domains)
        state = self.state[domain.UUIDString()]
        roll = self.rng.random()
        if state == PAUSED:
            steps = [(events.DOMAIN_EVENT_RESUMED, 0, RUNNING)]
        elif state == SHUTOFF:
            steps = [(events.DOMAIN_EVENT_STARTED, 0, RUNNING)]
        elif roll < 0.4:
            steps = [(events.DOMAIN_EVENT_SUSPENDED, 0, PAUSED)]
        elif roll < 0.65:
            # Hard reboot: the STOPPED is held, the STARTED supersedes it.
            steps = [(events.DOMAIN_EVENT_SHUTDOWN,
                      events.DOMAIN_EVENT_SHUTDOWN_HOST, None),
                     (events.DOMAIN_EVENT_STOPPED,
                      events.DOMAIN_EVENT_STOPPED_DESTROYED, SHUTOFF),
                     (events.DOMAIN_EVENT_STARTED, 0, RUNNING)]
        elif roll < 0.9:
            # The guest powers off: held for the grace, then delivered.
            steps = [(events.DOMAIN_EVENT_SHUTDOWN,
                      events.DOMAIN_EVENT_SHUTDOWN_GUEST, None),
                     (events.DOMAIN_EVENT_STOPPED,
                      events.DOMAIN_EVENT_STOPPED_SHUTDOWN, SHUTOFF)]
        else:
            steps = [(events.DOMAIN_EVENT_STOPPED,
                      events.DOMAIN_EVENT_STOPPED_CRASHED, SHUTOFF)]
        self.script.extend((domain,) + step for step in steps)


class Soak:

    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.latencies = []       # events not held, this interval
        self.overruns = []        # held STOPPED, beyond their hold
        self.all_latencies = Histogram()
        self.all_overruns = Histogram()
        self.live = weakref.WeakSet()
        self.handler_rng = random.Random(args.seed + 1)
        self.guests = Guests(args.instances, random.Random(args.seed))
        lifecycle = cfg.CONF.lifecycle
        # The event path as the driver builds it: its STOPPED policy
        # re-checks a held STOPPED against the guests' states.
        self.path = event_path.EventPath(
            lifecycle, self.deliver, self.guests.state.get,
            green=not concurrency.threading_mode())
        # Only to know how long the path held each STOPPED it delivers:
        # the soak runs no driver operation, so the hold depends on the
        # event and the options alone, as for this policy with none.
        self.hold_policy = policy.StoppedPolicy(
            lifecycle, operations.DriverOperations(), self.guests.state.get)
        self.translator = events.EventTranslator()
        self.sent = 0
        self.callbacks = 0
        self.loop_error = None
        native = concurrency.native_threading()
        self.stop_loop = native.Event()
        self.loop = native.Thread(target=self.libvirt_loop,
                                  name='soak-libvirt-loop', daemon=True)

    # The plugin's side

    def deliver(self, event):
        started = time.monotonic()
        waited = started - event.received_at
        hold = (self.hold_policy.hold_for(event) if holds.is_stopped(event)
                else None)
        with self.lock:
            if hold is None:
                self.latencies.append(waited)
            else:
                self.overruns.append(waited - hold)
            cost = self.handler_rng.uniform(self.args.handler_ms_min,
                                            self.args.handler_ms_max)
        time.sleep(cost / 1000.0)
        return True

    # libvirt's side

    def libvirt_loop(self):
        """Fire the callback ``--rate`` times a second, on schedule."""
        native_time = concurrency.native_time()

        class Sink:
            """Stands for the Host's event handler (virt/host.py)."""
            translator = self.translator
            _queue_event = staticmethod(self.sink)

        class Opaque:
            """Stands for the Host libvirt passes as opaque."""
            _event_handler = Sink

        callback = lc_host.lifecycle_callback
        period = 1.0 / self.args.rate
        next_at = native_time.monotonic()
        try:
            while not self.stop_loop.is_set():
                domain, event_type, detail = self.guests.next_callback()
                callback(None, domain, event_type, detail, Opaque)
                self.callbacks += 1
                next_at += period
                delay = next_at - native_time.monotonic()
                if delay > 0:
                    self.stop_loop.wait(delay)
        except Exception as exc:
            self.loop_error = exc

    def sink(self, item):
        if isinstance(item, events.DomainLifecycleEvent):
            self.sent += 1
            self.live.add(item)
        self.path.queue(item)

    # The run

    def take_interval(self):
        with self.lock:
            latencies, self.latencies = self.latencies, []
            overruns, self.overruns = self.overruns, []
            self.all_latencies.add_all(latencies)
            self.all_overruns.add_all(overruns)
        return latencies, overruns

    def run(self):
        args = self.args
        baseline_threads = proc_status()[2]
        workers = cfg.CONF.lifecycle.dispatch_workers
        thread_bound = baseline_threads + 2 + (
            workers if concurrency.threading_mode() else 0)
        samples = []   # (t, rss, os threads, live events or None)
        gc_pauses = []
        last_live = 0
        broken = []
        max_threads = 0
        print('soak: %s mode, %d instances, %.0f callbacks/s, handler '
              '%g-%g ms, dispatch_workers %d, stopped_event_delay %gs, '
              'grace %gs, %ds, warm-up %ds, seed %d' % (
                  'native threads' if concurrency.threading_mode()
                  else 'eventlet', args.instances, args.rate,
                  args.handler_ms_min, args.handler_ms_max, workers,
                  cfg.CONF.lifecycle.stopped_event_delay,
                  cfg.CONF.lifecycle.stopped_event_grace, args.duration,
                  args.warmup, args.seed))
        print('%5s %7s %7s %7s %6s %5s %5s %5s %5s %26s %15s %8s %8s '
              '%4s %4s %5s' % (
                  't s', 'sent', 'recv', 'deliv', 'cancl', 'fail', 'pend',
                  'held', 'queue', 'latency p50/p99/max ms',
                  'held+ p99/max', 'RSS MiB', 'peak', 'thr', 'plug',
                  'live'))
        # What import and set-up made stays; the periodic collection only
        # walks what the run allocates.
        gc.freeze()
        self.path.start()
        start = time.monotonic()
        self.loop.start()
        next_report = start + args.interval
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            rss, peak, threads = proc_status()
            max_threads = max(max_threads, threads)
            status = self.path.status()
            stats = status.counts
            if not identity(stats):
                broken.append((now - start, stats))
            live = None
            if len(samples) % LIVE_EVERY == 0:
                # Only what is still referenced: cyclic garbage waiting for
                # the collector is not kept by the plugin.
                collect_start = time.monotonic()
                gc.collect()
                gc_pauses.append(time.monotonic() - collect_start)
                live = len(self.live)
                last_live = live
            if now >= next_report or now - start >= args.duration:
                next_report += args.interval
                lat, over = self.take_interval()
                print('%5.0f %7d %7d %7d %6d %5d %5d %5d %5d %26s %15s %8.1f '
                      '%8.1f %4d %4d %5d' % (
                          now - start, self.sent, stats['received'],
                          stats['delivered'], stats['cancelled'],
                          stats['failed'], stats['pending'],
                          len(status.held), status.dispatch_queue,
                          '%.1f/%.1f/%.1f' % tuple(
                              1000 * x for x in (
                                  percentile(lat, 0.5),
                                  percentile(lat, 0.99),
                                  max(lat) if lat else float('nan'))),
                          '%.1f/%.1f' % tuple(
                              1000 * x for x in (
                                  percentile(over, 0.99),
                                  max(over) if over else float('nan'))),
                          rss / MIB, peak / MIB, threads,
                          len(concurrency.plugin_threads()), last_live))
                sys.stdout.flush()
            samples.append((now - start, rss, threads, live))
            if now - start >= args.duration:
                break
        self.stop_loop.set()
        self.loop.join(10)
        self.path.stop()
        self.take_interval()
        return self.verdict(samples, broken, max_threads, thread_bound,
                            gc_pauses)

    def verdict(self, samples, broken, max_threads, thread_bound,
                gc_pauses):
        args = self.args
        stats = self.path.status().counts
        failures = []
        print()
        print('totals: %d callbacks, %d events sent, %d received, %d '
              'delivered, %d cancelled, %d failed, %d pending' % (
                  self.callbacks, self.sent, stats['received'],
                  stats['delivered'], stats['cancelled'], stats['failed'],
                  stats['pending']))
        print('cancelled by reason: %s' % dict(sorted(
            stats['cancelled_by_reason'].items())))
        print('failed by error: %s' % stats['failed_by_error'])
        lat, over = self.all_latencies, self.all_overruns
        print('latency callback -> handler, whole run: p50 %.1f ms, p99 '
              '%.1f ms, max %.1f ms (%d events); held STOPPED beyond their '
              'hold: p99 %.1f ms, max %.1f ms (%d events)' % (
                  1000 * lat.percentile(0.5), 1000 * lat.percentile(0.99),
                  1000 * lat.max, lat.count, 1000 * over.percentile(0.99),
                  1000 * over.max, over.count))

        if self.loop_error is not None:
            failures.append('libvirt loop: %r' % (self.loop_error,))
        if broken:
            failures.append('identity broke at %d samples, first at %.0fs: '
                            '%s' % (len(broken), broken[0][0], broken[0][1]))
        if stats['pending'] or stats['received'] != self.sent or not (
                balanced(stats)):
            failures.append('identity after the stop: %d sent, %s'
                            % (self.sent, stats))

        left = concurrency.plugin_threads()
        print('threads: at most %d OS threads (bound %d); plugin threads '
              'left after the stop: %s' % (max_threads, thread_bound,
                                           left or 'none'))
        if max_threads > thread_bound:
            failures.append('threads: %d OS threads > bound %d'
                            % (max_threads, thread_bound))
        if left:
            failures.append('threads left after the stop: %s' % left)

        steady = [s for s in samples if s[0] >= args.warmup]
        third = len(steady) // 3
        if third < 2:
            failures.append('memory: run too short after the warm-up to '
                            'compare (%d samples)' % len(steady))
        else:
            first, last = steady[:third], steady[-third:]
            rss_first = statistics.median(s[1] for s in first)
            rss_last = statistics.median(s[1] for s in last)
            margin = max(args.rss_margin_mib * MIB,
                         rss_first * args.rss_margin_pct / 100.0)
            peak = max(s[1] for s in samples)
            print('memory: RSS median %.1f MiB over %.0f-%.0fs, %.1f MiB '
                  'over %.0f-%.0fs (growth %+.1f MiB, allowed %.1f MiB); '
                  'peak RSS %.1f MiB' % (
                      rss_first / MIB, first[0][0], first[-1][0],
                      rss_last / MIB, last[0][0], last[-1][0],
                      (rss_last - rss_first) / MIB, margin / MIB,
                      peak / MIB))
            if rss_last - rss_first > margin:
                failures.append('memory grew: %+.1f MiB > %.1f MiB' % (
                    (rss_last - rss_first) / MIB, margin / MIB))
        live = [s[3] for s in steady if s[3] is not None]
        part = len(live) // 3
        if part < 1:
            failures.append('live events: run too short after the warm-up '
                            'to compare (%d counts)' % len(live))
        else:
            live_first, live_last = max(live[:part]), max(live[-part:])
            print('live event objects (after gc, every %ds; gc pause at most '
                  '%.0f ms): at most %d in the first third, %d in the last' %
                  (LIVE_EVERY, 1000 * max(gc_pauses), live_first, live_last))
            if live_last > 1.5 * live_first + 50:
                failures.append('live events grew: %d > 1.5 x %d + 50'
                                % (live_last, live_first))
        for failure in failures:
            print('FAIL %s' % failure)
        print('soak %s' % ('FAILED' if failures else 'passed'))
        return 1 if failures else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--duration', type=int, default=600,
                        help='seconds of load (default 600)')
    parser.add_argument('--instances', type=int, default=500)
    parser.add_argument('--rate', type=float, default=50.0,
                        help='libvirt callbacks per second (default 50)')
    parser.add_argument('--handler-ms-min', type=float, default=5.0)
    parser.add_argument('--handler-ms-max', type=float, default=50.0)
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--interval', type=int, default=10,
                        help='seconds between report lines (default 10)')
    parser.add_argument('--warmup', type=int, default=None,
                        help='seconds left out of the memory check '
                             '(default: stopped_event_delay + 5, at least '
                             'a sixth of the run)')
    parser.add_argument('--rss-margin-mib', type=float, default=8.0)
    parser.add_argument('--rss-margin-pct', type=float, default=5.0)
    args = parser.parse_args()
    cfg.CONF([], project='nova')
    if args.warmup is None:
        args.warmup = int(max(cfg.CONF.lifecycle.stopped_event_delay + 5,
                              args.duration / 6.0))
    return Soak(args).run()


if __name__ == '__main__':
    sys.exit(main())
