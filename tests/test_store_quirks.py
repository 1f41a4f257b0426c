"""The pacing of change streams on SecantusDB (app/store/quirks.py `Pace`, `wake_pace`):
pure arithmetic on replies, no server needed."""

from app.store.quirks import WAKE_SPACING, Pace, wake_pace


def test_a_wake_stream_asks_again_at_once_after_a_quiet_spell():
    pace = wake_pace(secantus=True)
    assert pace.done(0, waited=2.0) == 0.0  # a write after a quiet spell: the enqueue's first
    assert pace.done(0, waited=0.15) == 0.0


def test_early_replies_space_a_wake_stream_from_2_ms_up_to_its_spacing():
    pace = wake_pace(secantus=True)
    pauses = [pace.done(0, waited=0.001) for _ in range(6)]
    assert pauses == [0.002, 0.004, 0.008, 0.016, WAKE_SPACING, WAKE_SPACING]
    # changes that keep coming are no reason to ask sooner: a busy server's writes wake it
    assert pace.done(1, waited=0.001) == WAKE_SPACING
    assert pace.done(1, waited=0.5) == 0.0  # a change after a quiet spell: ask again at once
    assert pace.done(0, waited=0.001) == 0.002  # the doubling starts over


def test_on_mongodb_a_wake_stream_is_never_paused():
    pace = wake_pace(secantus=False)
    assert [pace.done(c, waited=0.001) for c in (0, 1, 0, 3)] == [0.0, 0.0, 0.0, 0.0]


def test_the_event_streams_keep_their_own_pace():
    pace = Pace(secantus=True)
    assert pace.done(0, waited=0.5) == 0.05  # under a second is early for them
    assert pace.done(0, waited=0.5) == 0.1
    assert pace.done(3, waited=0.5) == 0.05
