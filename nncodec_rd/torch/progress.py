"""Progress of long encodes on stderr: a ``tqdm`` bar with its ETA on a terminal, plain lines a
log can keep when stderr is a pipe or a file, or a callable of the caller's.

One :class:`Progress` serves a whole encode. Counted work (calibration batches, sensitivities,
layers quantized, tensors written) goes through :meth:`Progress.step`; lines that matter whole
(a stage's summary, the file written) through :meth:`Progress.__call__` with ``final=True``.

>>> lines = []
>>> progress = Progress(lines.append)
>>> progress.step("quantize", 1, 2, "fc1.weight")
>>> progress.step("quantize", 2, 2, "fc2.weight")
>>> lines
['quantize 1/2 fc1.weight', 'quantize 2/2 fc2.weight']
"""

from __future__ import annotations

import sys
import time

PLAIN_LINE_SECONDS = 15.0
"""At most one plain progress line per stage this often when stderr is not a terminal (the first
and last steps of a stage are always printed)."""


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress on stderr; ``enabled``: True, False (silent) or a callable taking one line.

    ``terminal``: whether to draw a bar (None: when stderr is a terminal).
    """

    def __init__(self, enabled=True, *, terminal: bool | None = None,
                 plain_line_seconds: float = PLAIN_LINE_SECONDS):
        self.callback = enabled if callable(enabled) else None
        self.enabled = bool(enabled)
        self.terminal = terminal
        self.plain_line_seconds = plain_line_seconds
        self._bar = None
        self._stage = None
        self._stage_started = 0.0
        self._last_line = 0.0

    def _is_terminal(self) -> bool:
        if self.terminal is not None:
            return self.terminal
        try:
            return sys.stderr.isatty()
        except (AttributeError, ValueError):
            return False

    def step(self, stage: str, done: int, total: int | None, detail: str = "",
             seconds_left: float | None = None, milestone: bool = False) -> None:
        """``done`` of ``total`` units of ``stage`` are finished (or being worked on); ``detail``
        names the current one. ``seconds_left``: the caller's own estimate of the time left
        (units of unequal cost), else the stage's mean time per unit so far decides.
        ``milestone``: a log gets this step's line whenever it comes (a new block)."""
        if not self.enabled:
            return
        count = f"{done}/{total}" if total else f"{done}"
        if self.callback is not None:
            self.callback(f"{stage} {count}" + (f" {detail}" if detail else ""))
            return
        now = time.perf_counter()
        if stage != self._stage:
            self._close_bar()
            self._stage, self._stage_started, self._last_line = stage, now, 0.0
        if self._is_terminal() and self._draw_bar(stage, done, total, detail):
            return
        last = bool(total) and done >= total
        if done > 1 and not last and not milestone and \
                now - self._last_line < self.plain_line_seconds:
            return
        self._last_line = now
        elapsed = now - self._stage_started
        eta = ""
        if seconds_left is None and total and 0 < done < total and elapsed > 0:
            seconds_left = elapsed / done * (total - done)
        if seconds_left is not None:
            eta = f", about {_duration(seconds_left)} left"
        sys.stderr.write(f"{stage} {count}" + (f" {detail}" if detail else "")
                         + f" ({_duration(elapsed)} elapsed{eta})\n")
        sys.stderr.flush()

    def _draw_bar(self, stage, done, total, detail) -> bool:
        try:
            from tqdm import tqdm
        except ImportError:  # no tqdm: plain lines
            return False
        if self._bar is None:
            # initial: a bar drawn again after a line of its own counts its rate from here
            self._bar = tqdm(total=total, desc=stage, file=sys.stderr, leave=True,
                             dynamic_ncols=True, smoothing=0.1, initial=max(0, done - 1))
        bar = self._bar
        if total and bar.total != total:
            bar.total = total
        if detail:
            bar.set_postfix_str(detail[:60], refresh=False)
        bar.update(max(0, done - bar.n))
        if total and done >= total:
            self._close_bar()
        return True

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __call__(self, message: str, final: bool = False) -> None:
        """A line of its own: ``final`` lines are printed whole on a terminal and in logs; other
        lines only redraw the terminal's last line (and reach a callback)."""
        if self.callback is not None:
            self.callback(message)
            return
        if not self.enabled:
            return
        self._close_bar()  # the stage goes on: its elapsed time and ETA keep counting
        if self._is_terminal():
            sys.stderr.write("\r\033[K" + message[:120] + ("\n" if final else ""))
        elif final:
            sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End a bar still drawn (an encode that stopped early)."""
        self._close_bar()


__all__ = ["PLAIN_LINE_SECONDS", "Progress"]
