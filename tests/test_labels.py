"""The 18-class label: encode/decode both ways, age bands at the cut-offs, class names."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kfold import labels as L


@given(st.integers(min_value=0, max_value=17))
def test_encode_of_decode_gives_back_every_class(c):
    assert L.encode(*L.decode(c)) == c


@given(st.integers(0, 2), st.integers(0, 1), st.integers(0, 2))
def test_decode_of_encode_gives_back_mask_gender_and_age_band(mask, gender, band):
    c = L.encode(mask, gender, band)
    assert 0 <= c < L.N_CLASSES
    assert tuple(int(v) for v in L.decode(c)) == (mask, gender, band)


@given(st.lists(st.integers(0, 17), min_size=1, max_size=50))
def test_decode_and_encode_work_on_arrays(cs):
    arr = np.array(cs, dtype=np.int64)
    m, g, a = L.decode(arr)
    np.testing.assert_array_equal(L.encode(m, g, a), arr)


def test_every_class_is_one_mask_gender_age_combination():
    combos = {(m, g, a) for m in range(3) for g in range(2) for a in range(3)}
    assert sorted(L.encode(m, g, a) for m, g, a in combos) == list(range(18))


@pytest.mark.parametrize("bad", [-1, 18, [0, 18], [-3, 2]])
def test_decode_refuses_labels_outside_0_to_17(bad):
    with pytest.raises(ValueError, match="0..17"):
        L.decode(bad)


def test_the_competition_class_of_a_masked_young_man_is_0_and_an_unmasked_old_woman_17():
    assert L.encode(0, 0, 0) == 0
    assert L.encode(2, 1, 2) == 17
    assert L.encode(1, 0, 1) == 7


@pytest.mark.parametrize("age, band", [(0, 0), (18, 0), (29, 0), (29.9, 0), (30, 1), (57, 1), (58, 1),
                                       (59, 1), (59.5, 1), (60, 2), (61, 2), (100, 2)])
def test_age_band_with_the_competition_cuts_30_60(age, band):
    assert int(L.age_band(age, (30, 60))) == band


@pytest.mark.parametrize("age, band", [(29, 0), (30, 1), (57, 1), (58, 2), (59, 2), (60, 2)])
def test_age_band_with_cut_58_moves_58_and_59_year_olds_to_the_oldest_band(age, band):
    assert int(L.age_band(age, (30, 58))) == band


def test_age_band_defaults_to_the_competition_cuts():
    np.testing.assert_array_equal(L.age_band([29, 30, 59, 60]), [0, 1, 1, 2])
    assert L.DEFAULT_AGE_CUTS == (30, 60)


def test_age_band_of_an_array_is_int64():
    bands = L.age_band(np.array([20.0, 45.0, 70.0]), (30, 60))
    assert bands.dtype == np.int64
    assert bands.tolist() == [0, 1, 2]


@pytest.mark.parametrize("cuts", [(60, 30), (30, 30), (30,), (10, 20, 30)])
def test_age_band_refuses_cuts_that_are_not_two_increasing_numbers(cuts):
    with pytest.raises(ValueError, match="age cuts"):
        L.age_band(40, cuts)


def test_class_names_are_18_distinct_names_in_label_order():
    names = L.class_names()
    assert len(names) == 18 == len(set(names))
    assert names[0] == "wear/male/<30"
    assert names[4] == "wear/female/30-59"
    assert names[7] == "incorrect/male/30-59"
    assert names[17] == "not wear/female/>=60"
    for c, name in enumerate(names):
        m, g, a = (int(v) for v in L.decode(c))
        assert name == f"{L.MASK_NAMES[m]}/{L.GENDER_NAMES[g]}/{L.AGE_NAMES[a]}"


def test_image_stems_map_mask1_to_5_to_wear_incorrect_to_1_normal_to_2():
    assert L.IMAGE_STEMS == ("mask1", "mask2", "mask3", "mask4", "mask5", "incorrect_mask", "normal")
    assert [L.MASK_OF_STEM[s] for s in L.IMAGE_STEMS] == [0, 0, 0, 0, 0, 1, 2]
    assert L.GENDER_CODE == {"male": 0, "female": 1}
