"""Stop strings: where the first one appears in a growing text, and how much text might start one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StopMatch:
    """The text cut at a stop string (before it, or after it when it is kept) and the string."""

    text: str
    stop: str


class StopChecker:
    """Finds a request's stop strings in its output text as the text grows.

    A stop string may span tokens, so each check searches the new text plus the `max_stop_len - 1`
    characters before it: enough to see a match that ends in the new text, no more.
    """

    def __init__(self, stop: list[str], include_stop_str_in_output: bool) -> None:
        self.stop = stop
        self.include_stop_str_in_output = include_stop_str_in_output
        self._max_stop_len = max(map(len, stop))

    def find(self, text: str, num_new_chars: int, not_before: int = 0) -> StopMatch | None:
        """The earliest stop string in text that ends within its last num_new_chars characters and starts at
        `not_before` or later.

        Of two matches starting at the same place, the shorter wins: it was complete first.
        """
        search_from = max(not_before, len(text) - num_new_chars - self._max_stop_len + 1)
        matches = [(start, len(stop), stop) for stop in self.stop if (start := text.find(stop, search_from)) >= 0]
        if not matches:
            return None
        start, length, stop = min(matches)
        end = start + length if self.include_stop_str_in_output else start
        return StopMatch(text[:end], stop)

    def num_held_back_chars(self, text: str, not_before: int = 0) -> int:
        """How many trailing characters of text (from `not_before` on) could start a stop string, so a stream
        must not send them yet.

        Kept stop strings are sent either way, so nothing is held back for them.
        """
        if self.include_stop_str_in_output:
            return 0
        for length in range(min(len(text) - not_before, self._max_stop_len - 1), 0, -1):
            tail = text[-length:]
            if any(stop.startswith(tail) for stop in self.stop):
                return length
        return 0
