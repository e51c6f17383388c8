from kv_transition.data.binning import quantile_bins, sample_bins


def test_equal_count_bins_ordered_by_length():
    lengths = {f"e{i}": 100 + i for i in range(10)}
    groups = quantile_bins(lengths, 5)
    assert [len(g) for g in groups] == [2] * 5
    maxes = [max(lengths[e] for e in g) for g in groups]
    mins = [min(lengths[e] for e in g) for g in groups]
    assert all(maxes[i] < mins[i + 1] for i in range(4))


def test_clustered_lengths_never_give_empty_bins():
    lengths = {f"e{i}": 512 for i in range(7)}
    groups = quantile_bins(lengths, 3)
    assert [len(g) for g in groups] == [2, 3, 2]


def test_more_bins_than_examples_shrinks():
    assert len(quantile_bins({"a": 1, "b": 2}, 5)) == 2


def test_sampling_is_seeded_and_bounded():
    lengths = {f"e{i:02d}": i * 10 for i in range(40)}
    a = sample_bins(lengths, 4, 3, seed=7)
    b = sample_bins(lengths, 4, 3, seed=7)
    c = sample_bins(lengths, 4, 3, seed=8)
    assert [x.members for x in a] == [x.members for x in b]
    assert [x.members for x in a] != [x.members for x in c]
    assert all(len(x.members) == 3 and x.pool == 10 for x in a)
    assert a[0].token_min == 0 and a[-1].token_max == 390
