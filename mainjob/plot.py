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

"""A PNG bar chart of the latencies, written with zlib only.

matplotlib is not in OpenStack's constraints, so the chart is drawn on an
RGB raster here, with a 5x7 pixel font (upper case, digits and a little
punctuation; text is shown upper case), and written as a PNG.
"""

import math
import struct
import zlib

# Rows of 5 pixels, top to bottom; bit 4 is the leftmost pixel.
FONT = {
    ' ': (0, 0, 0, 0, 0, 0, 0),
    '0': (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E),
    '1': (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    '2': (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F),
    '3': (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    '4': (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02),
    '5': (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    '6': (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E),
    '7': (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    '8': (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E),
    '9': (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    'A': (0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11),
    'B': (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    'C': (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E),
    'D': (0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C),
    'E': (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F),
    'F': (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    'G': (0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F),
    'H': (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11),
    'I': (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    'J': (0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C),
    'K': (0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11),
    'L': (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F),
    'M': (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    'N': (0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11),
    'O': (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    'P': (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10),
    'Q': (0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D),
    'R': (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    'S': (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E),
    'T': (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    'U': (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    'V': (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    'W': (0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A),
    'X': (0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11),
    'Y': (0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04),
    'Z': (0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F),
    '.': (0, 0, 0, 0, 0, 0x0C, 0x0C),
    ',': (0, 0, 0, 0, 0x0C, 0x04, 0x08),
    ':': (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0),
    '-': (0, 0, 0, 0x1F, 0, 0, 0),
    '_': (0, 0, 0, 0, 0, 0, 0x1F),
    '/': (0, 0x01, 0x02, 0x04, 0x08, 0x10, 0),
    '(': (0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02),
    ')': (0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08),
    '%': (0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03),
    '+': (0, 0x04, 0x04, 0x1F, 0x04, 0x04, 0),
    '<': (0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02),
    '>': (0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08),
    '=': (0, 0, 0x1F, 0, 0x1F, 0, 0),
    '?': (0x0E, 0x11, 0x01, 0x02, 0x04, 0, 0x04),
    '!': (0x04, 0x04, 0x04, 0x04, 0x04, 0, 0x04),
    "'": (0x0C, 0x04, 0x08, 0, 0, 0, 0),
}
GLYPH_W, GLYPH_H = 5, 7

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (200, 200, 200)
DARK_GREY = (90, 90, 90)
RED = (200, 30, 30)
COLOURS = {'plugin': (31, 119, 180), 'upstream': (255, 127, 14)}


class Canvas:
    """An RGB raster with rectangles and text."""

    def __init__(self, width, height, background=WHITE):
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def rect(self, x, y, w, h, colour):
        x0, y0 = max(0, int(x)), max(0, int(y))
        x1 = min(self.width, int(x + w))
        y1 = min(self.height, int(y + h))
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes(colour) * (x1 - x0)
        for yy in range(y0, y1):
            start = (yy * self.width + x0) * 3
            self.pixels[start:start + len(row)] = row

    def pixel(self, x, y):
        start = (y * self.width + x) * 3
        return tuple(self.pixels[start:start + 3])

    def text(self, x, y, text, colour=BLACK, scale=1):
        """Draw text with its top left corner at (x, y); returns its width."""
        cursor = x
        for char in text.upper():
            rows = FONT.get(char, FONT['?'])
            for r, bits in enumerate(rows):
                for c in range(GLYPH_W):
                    if bits & (1 << (GLYPH_W - 1 - c)):
                        self.rect(cursor + c * scale, y + r * scale,
                                  scale, scale, colour)
            cursor += (GLYPH_W + 1) * scale
        return cursor - x

    def png(self):
        """The raster as PNG bytes (8-bit RGB, no filtering)."""
        stride = self.width * 3
        raw = b''.join(
            b'\x00' + bytes(self.pixels[y * stride:(y + 1) * stride])
            for y in range(self.height))
        return (b'\x89PNG\r\n\x1a\n' +
                _chunk(b'IHDR', struct.pack('>IIBBBBB', self.width,
                                            self.height, 8, 2, 0, 0, 0)) +
                _chunk(b'IDAT', zlib.compress(raw, 9)) +
                _chunk(b'IEND', b''))


def _chunk(kind, data):
    return (struct.pack('>I', len(data)) + kind + data +
            struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff))


def text_width(text, scale=1):
    return len(text) * (GLYPH_W + 1) * scale


def nice_step(maximum, ticks=6):
    """A 1, 2 or 5 times a power of ten step with about ``ticks`` ticks."""
    if maximum <= 0:
        return 1.0
    raw = maximum / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _tick_label(value, step):
    decimals = 0 if step >= 1 else min(3, -math.floor(math.log10(step)))
    return '%.*f' % (decimals, value)


CHANGE_TO_API = 'SECONDS FROM HYPERVISOR CHANGE TO API'
REQUEST_TO_API = 'SECONDS FROM API REQUEST TO API SHOWING IT DONE'


def bar_chart(rows, title, drivers=('plugin', 'upstream'), scale=2,
              axis_title=CHANGE_TO_API):
    """A grouped horizontal bar chart.

    ``rows`` is a list of (label, {driver: (seconds or None, passed)}); a
    missing value gets no bar (a bar of any length would read as a time),
    only 'NOT SEEN' in red (or 'NOT RUN' when the driver has no result); a
    failed result gets 'FAIL' after its value.
    """
    char_w = (GLYPH_W + 1) * scale
    line_h = (GLYPH_H + 3) * scale
    bar_h = (GLYPH_H + 3) * scale
    label_w = max([text_width(label, scale) for label, _ in rows] + [0])
    left = 20 + label_w + 20
    plot_w = 620
    right_margin = 16 * char_w
    width = left + plot_w + right_margin
    top = 20 + line_h * 3
    group_h = bar_h * len(drivers) + 12
    height = top + group_h * max(1, len(rows)) + line_h * 3 + 10

    values = [v for _, per in rows for v, _ in per.values() if v is not None]
    step = nice_step(max(values) if values else 1.0)
    axis_max = step * max(1, math.ceil(max(values or [step]) / step))

    canvas = Canvas(width, height)
    canvas.text(20, 20, title, BLACK, scale)
    # Legend.
    x = 20
    for driver in drivers:
        colour = COLOURS.get(driver, DARK_GREY)
        canvas.rect(x, 20 + line_h + 2, bar_h, bar_h - 4, colour)
        x += bar_h + char_w
        x += canvas.text(x, 20 + line_h + 2, driver, BLACK, scale) + 2 * char_w

    def xpos(value):
        return left + plot_w * (value / axis_max)

    # Grid and axis.
    bottom = top + group_h * max(1, len(rows))
    tick = 0.0
    while tick <= axis_max + step / 2:
        gx = int(xpos(tick))
        canvas.rect(gx, top - 4, 1, bottom - top + 8, GREY)
        label = _tick_label(tick, step)
        canvas.text(gx - text_width(label, scale) // 2, bottom + 10, label,
                    DARK_GREY, scale)
        tick += step
    canvas.rect(left, top - 4, 1, bottom - top + 8, BLACK)
    canvas.text(left + (plot_w - text_width(axis_title, scale)) // 2,
                bottom + 10 + line_h + 4, axis_title, BLACK, scale)

    for index, (label, per_driver) in enumerate(rows):
        gy = top + index * group_h
        canvas.text(20, gy + (group_h - 12 - GLYPH_H * scale) // 2, label,
                    BLACK, scale)
        for slot, driver in enumerate(drivers):
            by = gy + slot * bar_h
            colour = COLOURS.get(driver, DARK_GREY)
            value, passed = per_driver.get(driver, (None, False))
            if value is None:
                note = 'NOT SEEN' if driver in per_driver else 'NOT RUN'
                canvas.text(left + char_w, by + 2 * scale, note, RED, scale)
                continue
            end = max(left + 2, int(xpos(value)))
            canvas.rect(left + 1, by + 2, end - left - 1, bar_h - 4, colour)
            text = '%.2f' % value + ('' if passed else ' FAIL')
            canvas.text(end + char_w // 2, by + 2 * scale, text,
                        BLACK if passed else RED, scale)
    return canvas


def stack(canvases):
    """One canvas with ``canvases`` one below the other, left-aligned."""
    out = Canvas(max(c.width for c in canvases),
                 sum(c.height for c in canvases))
    y = 0
    for canvas in canvases:
        stride = canvas.width * 3
        for row in range(canvas.height):
            start = ((y + row) * out.width) * 3
            out.pixels[start:start + stride] = (
                canvas.pixels[row * stride:(row + 1) * stride])
        y += canvas.height
    return out


def rows_from_results(results, drivers=('plugin', 'upstream'),
                      field='latency'):
    """Chart rows from :class:`~mainjob.results.Result`.

    ``field``: ``latency`` (change to API) or ``total`` (request to API;
    scenarios with no request, such as a guest's own power-off, are left
    out).
    """
    rows = {}
    for result in results:
        if result.driver not in drivers:
            continue
        label, per = rows.setdefault(result.scenario, (result.title, {}))
        per[result.driver] = (getattr(result, field), result.passed)
    if field == 'total':
        requested = {r.scenario for r in results if r.total is not None}
        return [row for scenario, row in rows.items()
                if scenario in requested]
    return list(rows.values())


def write_plot(path, results, title, drivers=('plugin', 'upstream')):
    """Write the latency charts of ``results`` to ``path`` (PNG).

    Above: hypervisor change to API, every scenario. Below: API request to
    API showing it done, the scenarios that start with a request.
    """
    charts = [bar_chart(rows_from_results(results, drivers), title,
                        drivers)]
    requested = rows_from_results(results, drivers, field='total')
    if requested:
        charts.append(bar_chart(requested, 'REQUEST TO API', drivers,
                                axis_title=REQUEST_TO_API))
    canvas = stack(charts)
    with open(path, 'wb') as f:
        f.write(canvas.png())
    return canvas
