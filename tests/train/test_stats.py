import math
import statistics

import pytest

from lame.evaluation.stats import compare, summarise


def test_summary_matches_statistics_module():
    values = [24.88, 29.40, 26.90, 17.26]
    s = summarise(values)
    assert s.mean == pytest.approx(statistics.mean(values))
    assert s.sd == pytest.approx(statistics.stdev(values))
    assert s.standard_error == pytest.approx(statistics.stdev(values) / 2)
    assert str(s) == f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
    assert summarise([3.0]).sd == 0.0 and "1 seed" in str(summarise([3.0]))


def test_difference_within_two_standard_errors_is_not_significant():
    a, b = summarise([25.0, 27.0, 26.0]), summarise([26.0, 28.0, 27.0])  # delta -1, se ~0.82
    diff = compare(a, b)
    assert diff.delta == pytest.approx(-1.0)
    assert diff.standard_error == pytest.approx(math.sqrt(2 * (1 / 3)))
    assert not diff.significant and "not significant" in str(diff)
    far = compare(summarise([35.0, 36.0, 34.0]), b)
    assert far.significant and "not significant" not in str(far)


def test_single_seed_never_ranks_and_bad_values_are_refused():
    assert not compare(summarise([30.0]), summarise([20.0, 21.0])).significant
    with pytest.raises(ValueError, match="no values"):
        summarise([])
    with pytest.raises(ValueError, match="finite"):
        summarise([1.0, math.nan])
