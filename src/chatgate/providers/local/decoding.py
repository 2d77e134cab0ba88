"""Turning sampled tokens into text: incremental UTF-8 decoding and stop-sequence matching."""

import codecs


class StopMatcher:
    """Feeds generated text through, holding back any tail that might begin a stop sequence.

    ``feed`` returns the text that is safe to emit; ``stopped`` turns true once a stop sequence
    appears, and the stop sequence itself is never emitted.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        self.matched: str | None = None  # the stop sequence that ended the text
        self.remainder = ""  # text that came after it in the same feed

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self._pending += text
        found = [(i, s) for s in self._stops if (i := self._pending.find(s)) >= 0]
        if found:
            cut, stop = min(found)
            self.stopped, self.matched = True, stop
            out, self.remainder = self._pending[:cut], self._pending[cut + len(stop) :]
            self._pending = ""
            return out
        hold = self._held_back()
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out

    def _held_back(self) -> int:
        """Length of the longest suffix of the pending text that is a proper prefix of a stop."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), longest, -1):
                if self._pending.endswith(stop[:n]):
                    longest = n
                    break
        return longest


class TextAssembler:
    """Token pieces (bytes) in, text out; a multi-byte character split across tokens waits for its end."""

    def __init__(self, stops: list[str]) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.matcher = StopMatcher(stops)

    def feed(self, piece: bytes) -> str:
        return self.matcher.feed(self._utf8.decode(piece))

    def finish(self) -> str:
        return self.matcher.feed(self._utf8.decode(b"", final=True)) + self.matcher.flush()
