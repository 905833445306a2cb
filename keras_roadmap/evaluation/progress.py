"""A dependency-free progress line on stderr for long evaluations, silent for short ones."""

import sys
import time


class Progress:
    """Counts `total` units of work; prints `label: done/total (pct) elapsed, ETA` to `stream`.

    With `enabled=None` (auto) nothing is printed until `delay` seconds have passed, so runs
    shorter than that stay silent; True prints from the first update, False never prints.
    Updates are throttled to one every `interval` seconds; `close()` ends the line.
    """

    def __init__(self, total: int, label: str, enabled: bool | None = None, *, delay=2.0, interval=1.0, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.delay, self.interval = delay, interval
        self.stream = sys.stderr if stream is None else stream
        self.began = time.perf_counter()
        self.done = 0
        self._last = None

    def update(self, n: int):
        self.done += int(n)
        now = time.perf_counter()
        if self.enabled is False or (self.enabled is None and now - self.began < self.delay):
            return
        if self._last is not None and now - self._last < self.interval and self.done < self.total:
            return
        self._last = now
        elapsed = now - self.began
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        self.stream.write(
            f"\r{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%) "
            f"{elapsed:.0f} s elapsed, ~{eta:.0f} s left "
        )
        self.stream.flush()

    def close(self):
        if self._last is not None:
            self.stream.write("\n")
            self.stream.flush()
