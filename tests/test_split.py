import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prep.split import SPLITS, check_disjoint, parse_ratios, split_counts, split_sources


@st.composite
def ratio_triples(draw):
    weights = draw(st.lists(st.integers(0, 20), min_size=3, max_size=3).filter(lambda w: sum(w) > 0))
    return tuple(w / sum(weights) for w in weights)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 60), ratios=ratio_triples(), seed=st.integers(0, 2**32 - 1))
def test_every_source_in_exactly_one_split(n, ratios, seed):
    sources = [f"EDF{i:03d}" for i in range(n)]
    assignment = split_sources(sources, ratios, seed)
    placed = [name for split in SPLITS for name in assignment[split]]
    assert sorted(placed) == sorted(sources)  # all placed, none twice
    wanted = [s for s, r in zip(SPLITS, ratios, strict=True) if r > 0]
    assert all(assignment[s] for s in wanted[:n])  # non-zero splits get a source while there are enough
    for split, ratio in zip(SPLITS, ratios, strict=True):
        if ratio == 0:
            assert not assignment[split]
        # Rounding moves a split by < 1 source; each guaranteed split may take one more from it.
        assert abs(len(assignment[split]) - n * ratio) < len(wanted) + 1e-9


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 1000))
def test_split_is_reproducible_and_order_free(n, seed):
    sources = [f"S{i}" for i in range(n)]
    assert split_sources(sources, (0.8, 0.15, 0.05), seed) == split_sources(sources[::-1], (0.8, 0.15, 0.05), seed)


def test_reference_ratios_on_the_twelve_isbi_sources():
    # ISBI EDF004–EDF015 after the reference's exclusions: 9 train, 2 valid, 1 test.
    assert split_counts(12, (0.8, 0.15, 0.05)) == [9, 2, 1]
    assert split_counts(3, (0.8, 0.15, 0.05)) == [1, 1, 1]
    assert split_counts(2, (0.8, 0.15, 0.05)) == [1, 1, 0]
    assert split_counts(1, (0.8, 0.15, 0.05)) == [1, 0, 0]
    assert split_counts(5, (0.0, 0.5, 0.5)) == [0, 3, 2]


def test_leaky_assignment_is_refused():
    with pytest.raises(ValueError, match="leak"):
        check_disjoint({"train": ["EDF001", "EDF002"], "valid": [], "test": ["EDF002"]})


@pytest.mark.parametrize("text", ["0.8,0.15", "0.8,0.3,0.05", "1.1,-0.1,0", "nan,0.5,0.5", "a,b,c"])
def test_bad_ratios_are_refused(text):
    with pytest.raises(ValueError):
        parse_ratios(text)
