"""Progress of map-style calls: a tqdm bar, or the caller's own callback."""

from __future__ import annotations

import sys
import threading
# Annotations only (strings here): importing typing costs a pool's creation ~4 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Union

    ProgressArg = Union[bool, Callable[[int, int, int], Any], None]

# progress=True for a tqdm bar, or a callable progress(done, failed, total).


class Progress:
    """Counts finished and failed items of one call and shows them. Updated from the
    result thread; a callback that raises is reported there and does not stop the call."""

    def __init__(self, how: ProgressArg, total: int, name: Optional[str] = None):
        self.total = total
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._callback: Optional[Callable[[int, int, int], Any]] = None
        self._bar: Any = None
        if callable(how):
            self._callback = how
        elif how:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError(
                    "progress=True draws a tqdm progress bar, and tqdm is not installed: "
                    "`pip install tqdm` (or `pip install hangfree[progress]`), or pass a "
                    "callable progress(done, failed, total) instead"
                ) from None
            self._bar = tqdm(total=total, desc=name, unit="task")

    def update(self, ok: bool) -> None:
        with self._lock:
            self.done += 1
            if not ok:
                self.failed += 1
            done, failed = self.done, self.failed
        try:
            if self._bar is not None:
                if not ok:
                    self._bar.set_postfix(failed=failed, refresh=False)
                self._bar.update(1)
                if done == self.total:
                    self._bar.close()
            if self._callback is not None:
                self._callback(done, failed, self.total)
        except Exception as e:  # report, and let the call go on
            print(f"hangfree: exception in a progress callback: {e!r}", file=sys.stderr)
