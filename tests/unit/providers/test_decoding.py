from chatgate.providers.local.decoding import StopMatcher, TextAssembler


def feed_all(matcher: StopMatcher, pieces: list[str]) -> str:
    return "".join(matcher.feed(p) for p in pieces) + matcher.flush()


def test_text_without_stops_passes_through() -> None:
    assert feed_all(StopMatcher([]), ["Hel", "lo", " world"]) == "Hello world"


def test_stop_sequence_is_cut_and_never_emitted() -> None:
    matcher = StopMatcher(["END"])
    assert feed_all(matcher, ["one two E", "N", "D three"]) == "one two "
    assert matcher.stopped


def test_partial_stop_prefix_is_held_back_then_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc ST") == "abc "
    assert matcher.feed("ART") == "START"
    assert not matcher.stopped


def test_earliest_of_several_stops_wins() -> None:
    matcher = StopMatcher(["\n\n", "b"])
    assert feed_all(matcher, ["a\n\nb"]) == "a"


def test_flush_after_stop_emits_nothing() -> None:
    matcher = StopMatcher(["x"])
    assert matcher.feed("ax yz") == "a"
    assert matcher.feed("more") == ""
    assert matcher.flush() == ""


def test_multibyte_character_split_across_tokens() -> None:
    text = TextAssembler([])
    snowman = "☃".encode()
    assert text.feed(snowman[:1]) == ""
    assert text.feed(snowman[1:]) == "☃"
    assert text.finish() == ""


def test_incomplete_utf8_at_the_end_is_replaced_not_lost() -> None:
    text = TextAssembler([])
    assert text.feed(b"ok\xe2") == "ok"
    assert text.finish() == "\ufffd"


def test_the_matched_stop_and_what_followed_it_are_kept() -> None:
    matcher = StopMatcher(["<tool_call>", "END"])
    assert matcher.feed('Sure. <tool_call>\n{"na') == "Sure. "
    assert matcher.matched == "<tool_call>"
    assert matcher.remainder == '\n{"na'
