"""Pairing by device timestamps: certain matches only, never a shifted frame; and what a
spot keeps of its paired shots."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plumelink.drivers.protocols import Frames
from plumelink.pipeline.shot_pairing import (
    SHOT_AMBIGUOUS,
    SHOT_DUPLICATE,
    SHOT_MISSING,
    SHOT_OK,
    BurstPairing,
    Pairer,
    assign,
    reduce_pass,
    reduce_spot,
)

PERIOD = 0.02


def frames_for(shots: list[int], clock_offset: float, *, burst_start: float = 100.0,
               jitter: float = 0.0, seed: int = 0) -> Frames:
    """Frames of the given shot numbers; counts encode the shot so tests can check matches."""
    rng = np.random.default_rng(seed)
    t = burst_start + clock_offset + PERIOD * np.asarray(shots, dtype=float)
    t = t + rng.uniform(-jitter, jitter, t.size) * PERIOD
    counts = np.zeros((len(shots), 4), np.uint16)
    counts[:, 0] = np.asarray(shots, dtype=np.uint16)
    counts[:, 1] = 7
    return Frames(counts, t, np.arange(len(shots), dtype=np.int64))


def shot_of_frame(frames: Frames, i: int) -> int:
    return int(frames.counts[i, 0])


def test_complete_burst_is_self_anchored():
    f = frames_for(list(range(10)), 5.0, jitter=0.1)
    p = assign(f, 10, PERIOD, None)
    assert p.self_anchored
    assert (p.reason == SHOT_OK).all()
    assert list(p.frame_of_shot) == list(range(10))


def test_interior_gap_is_certain_without_help():
    f = frames_for([0, 1, 2, 4, 5, 6, 7, 8, 9], 3.0)
    p = assign(f, 10, PERIOD, None)
    assert p.self_anchored
    assert p.reason[3] == SHOT_MISSING
    assert [shot_of_frame(f, i) for i in p.frame_of_shot if i >= 0] == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_missing_first_shot_alone_is_ambiguous():
    f = frames_for(list(range(1, 10)), 3.0)
    p = assign(f, 10, PERIOD, None)
    assert not p.self_anchored
    assert (p.reason == SHOT_AMBIGUOUS).all()
    assert (p.frame_of_shot == -1).all()


def test_missing_first_shot_resolved_through_the_other_clock():
    pairer = Pairer()
    pairer.pair({"primary": frames_for(list(range(10)), 1.0),
                 "secondary": frames_for(list(range(10)), -7.5)}, 10, PERIOD)
    assert pairer.offsets_s["secondary"] == pytest.approx(-8.5)
    f_p = frames_for(list(range(1, 10)), 1.0, burst_start=200.0)
    f_s = frames_for(list(range(10)), -7.5, burst_start=200.0)
    out = pairer.pair({"primary": f_p, "secondary": f_s}, 10, PERIOD)
    assert out["primary"].reason[0] == SHOT_MISSING
    assert (out["primary"].reason[1:] == SHOT_OK).all()
    for k in range(1, 10):
        assert shot_of_frame(f_p, out["primary"].frame_of_shot[k]) == k
    # the missing last shot of the secondary is also placed by the primary's anchor
    f_p = frames_for(list(range(10)), 1.0, burst_start=300.0)
    f_s = frames_for(list(range(9)), -7.5, burst_start=300.0)
    out = pairer.pair({"primary": f_p, "secondary": f_s}, 10, PERIOD)
    assert out["secondary"].reason[9] == SHOT_MISSING
    assert out["secondary"].valid[:9].all()


def test_both_systems_missing_an_end_shot_is_ambiguous_for_both():
    pairer = Pairer()
    pairer.pair({"primary": frames_for(list(range(10)), 1.0),
                 "secondary": frames_for(list(range(10)), 2.0)}, 10, PERIOD)
    out = pairer.pair({"primary": frames_for(list(range(1, 10)), 1.0, burst_start=50.0),
                       "secondary": frames_for(list(range(9)), 2.0, burst_start=50.0)},
                      10, PERIOD)
    assert (out["primary"].reason == SHOT_AMBIGUOUS).all()
    assert (out["secondary"].reason == SHOT_AMBIGUOUS).all()


def test_identical_duplicate_is_kept_once_different_duplicate_flagged():
    f = frames_for([0, 1, 2, 2, 3, 4], 0.0)
    p = assign(f, 5, PERIOD, None)
    assert (p.reason == SHOT_OK).all()
    assert p.discarded == 1
    counts = f.counts.copy()
    counts[3, 1] = 99  # a second, different frame at shot 2's time
    g = Frames(counts, f.timestamps_s, f.counters)
    p = assign(g, 5, PERIOD, None)
    assert p.reason[2] == SHOT_DUPLICATE
    assert p.frame_of_shot[2] == -1
    assert (p.reason[[0, 1, 3, 4]] == SHOT_OK).all()


def test_stale_frame_of_an_earlier_burst_is_discarded():
    stale = frames_for([9], 0.0, burst_start=0.0)  # previous burst, long ago
    now = frames_for(list(range(10)), 0.0, burst_start=10.0)
    f = Frames(np.concatenate([stale.counts, now.counts]),
               np.concatenate([stale.timestamps_s, now.timestamps_s]),
               np.arange(11, dtype=np.int64))
    p = assign(f, 10, PERIOD, None)
    assert p.self_anchored and p.valid.all() and p.discarded == 1
    assert [shot_of_frame(f, i) for i in p.frame_of_shot] == list(range(10))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="at least one shot"):
        Pairer().pair({"primary": frames_for([0], 0), "secondary": frames_for([0], 0)}, 0, PERIOD)
    with pytest.raises(ValueError, match="secondary"):
        Pairer().pair({"primary": frames_for([0], 0)}, 1, PERIOD)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 30), data=st.data())
def test_property_never_a_wrong_match(n, data):
    """Whatever shots each system drops or duplicates, every assigned frame is its shot's."""
    pairer = Pairer()
    pairer.pair({"primary": frames_for(list(range(n)), 0.3),
                 "secondary": frames_for(list(range(n)), -4.1)}, n, PERIOD)
    frames = {}
    for system, offset in (("primary", 0.3), ("secondary", -4.1)):
        kept = [k for k in range(n) if data.draw(st.booleans(), label=f"{system} keeps {k}")]
        dup = data.draw(st.sampled_from([None, *kept]) if kept else st.none())
        shots = sorted(kept + ([dup] if dup is not None else []))
        frames[system] = frames_for(shots, offset, burst_start=77.0, jitter=0.2,
                                    seed=data.draw(st.integers(0, 9)))
    out = pairer.pair(frames, n, PERIOD)
    for system, p in out.items():
        f = frames[system]
        for k in range(n):
            i = p.frame_of_shot[k]
            if i >= 0:
                assert shot_of_frame(f, i) == k
            else:
                assert p.reason[k] != SHOT_OK


def test_stale_frame_alone_conflicts_with_the_other_clock_and_is_not_trusted():
    """One-shot bursts: the primary missed shot 5 but got shot 4's frame late; the secondary
    saw shot 5. The primary anchors on the stale frame, which contradicts the learnt offset."""
    pairer = Pairer()
    spacing = 0.5  # s between one-shot bursts
    for k in range(3):
        pairer.pair({"primary": frames_for([0], 1.0, burst_start=k * spacing),
                     "secondary": frames_for([0], 2.0, burst_start=k * spacing)}, 1, PERIOD)
    out = pairer.pair({"primary": frames_for([0], 1.0, burst_start=2 * spacing),
                       "secondary": frames_for([0], 2.0, burst_start=3 * spacing)}, 1, PERIOD)
    assert not out["primary"].valid.any()
    assert not out["secondary"].valid.any()
    assert out["primary"].reason[0] == SHOT_AMBIGUOUS


def test_a_clock_jump_is_learnt_once_two_whole_bursts_agree_on_it():
    """The secondary's clock jumps by 40 s (a unit restarted): the first burst after the jump
    is not trusted, the next one, whole on both systems with the same new offset, is."""
    pairer = Pairer()
    for k in range(2):
        out = pairer.pair({"primary": frames_for(list(range(5)), 1.0, burst_start=k),
                           "secondary": frames_for(list(range(5)), 2.0, burst_start=k)},
                          5, PERIOD)
        assert out["secondary"].valid.all()
    jumped = [pairer.pair({"primary": frames_for(list(range(5)), 1.0, burst_start=k),
                           "secondary": frames_for(list(range(5)), 42.0, burst_start=k)},
                          5, PERIOD) for k in range(2, 5)]
    assert not jumped[0]["primary"].valid.any() and not jumped[0]["secondary"].valid.any()
    for out in jumped[1:]:
        assert out["primary"].valid.all() and out["secondary"].valid.all()
    assert pairer.offsets_s["secondary"] == pytest.approx(41.0)
    assert pairer.clock_jumps == 1
    # with the new offset learnt, a burst missing its first shot on the secondary is anchored
    # through it again
    out = pairer.pair({"primary": frames_for(list(range(5)), 1.0, burst_start=6),
                       "secondary": frames_for([1, 2, 3, 4], 42.0, burst_start=6)}, 5, PERIOD)
    assert list(out["secondary"].valid) == [False, True, True, True, True]


def test_a_burst_whole_on_one_system_only_does_not_confirm_a_jump():
    pairer = Pairer()
    pairer.pair({"primary": frames_for(list(range(5)), 1.0, burst_start=0),
                 "secondary": frames_for(list(range(5)), 2.0, burst_start=0)}, 5, PERIOD)
    for k, secondary in enumerate(([0, 1, 2, 3, 4], [0, 1, 2, 4])):
        out = pairer.pair({"primary": frames_for(list(range(5)), 1.0, burst_start=k + 1),
                           "secondary": frames_for(secondary, 42.0, burst_start=k + 1)},
                          5, PERIOD)
        assert not out["secondary"].valid.any()
    assert pairer.clock_jumps == 0


def test_two_equal_groups_of_frames_are_not_guessed_between():
    f = Frames(np.zeros((2, 4), np.uint16), np.array([1.0, 5.0]), np.arange(2))
    p = assign(f, 1, PERIOD, None)
    assert not p.self_anchored and not p.valid.any()


# ---------------------------------------------------------------------------- shots -> spots
def burst_of(primary_shots: list[int], secondary_shots: list[int], n_shots: int
             ) -> BurstPairing:
    frames = {"primary": frames_for(primary_shots, 5.0), "secondary": frames_for(secondary_shots,
                                                                                 -3.0)}
    pairer = Pairer()
    pairer.pair({s: frames_for(list(range(n_shots)), o, burst_start=50.0)
                 for s, o in (("primary", 5.0), ("secondary", -3.0))}, n_shots, PERIOD)
    return BurstPairing(pairer.pair(frames, n_shots, PERIOD), frames)


def test_a_spot_is_the_mean_of_the_shots_both_systems_saw():
    burst = burst_of([0, 1, 2, 3], [0, 2, 3], 4)  # the secondary missed shot 1
    spot = reduce_spot(burst)
    for system in ("primary", "secondary"):
        result = spot[system]
        assert result.reason == "" and result.frame == 0
        # counts encode the shot number: the mean of shots 0, 2 and 3, rounded
        assert result.spectrum is not None and result.spectrum[0] == round((0 + 2 + 3) / 3)
        assert result.spectrum.dtype == np.uint16
    assert burst.spot_valid() == {"primary": True, "secondary": True}
    assert burst.why() == "secondary: missing"


def test_a_spot_one_system_missed_entirely_stays_valid_for_the_other_alone():
    burst = burst_of([0, 1], [], 2)
    spot = reduce_spot(burst)
    assert spot["primary"].spectrum is not None and spot["primary"].spectrum[0] == round(0.5)
    assert spot["secondary"].spectrum is None and spot["secondary"].reason == "missing"


def test_a_fly_pass_keeps_the_shot_one_system_missed_on_the_other():
    burst = burst_of([0, 1, 2, 3, 4], [0, 1, 3, 4], 5)  # the secondary missed shot 2
    passed = reduce_pass(burst)
    np.testing.assert_array_equal(passed["primary"].kept, [True] * 5)
    np.testing.assert_array_equal(passed["secondary"].kept, [True, True, False, True, True])
    assert passed["primary"].reasons == []
    assert passed["secondary"].reasons == [(2, "missing")]
    kept = passed["secondary"].frame_of_shot[passed["secondary"].kept]
    np.testing.assert_array_equal(burst.frames["secondary"].counts[kept, 0], [0, 1, 3, 4])


def test_an_inhibited_burst_is_distrusted_on_every_system():
    burst = burst_of([0, 1, 2], [0, 1, 2], 3).distrusted()
    for p in burst.pairing.values():
        assert (p.reason == SHOT_AMBIGUOUS).all() and (p.frame_of_shot == -1).all()
    assert {r.reason for r in reduce_spot(burst).values()} == {"ambiguous"}
