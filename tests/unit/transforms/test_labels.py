"""Level names to class indices."""

import pytest

from thyroid_monai.tirads import UnknownLabelError
from thyroid_monai.transforms.labels import UNKNOWN_LEVEL, TiradsToIndex


def test_a_missing_level_is_unknown_but_a_wrong_name_is_an_error():
    to_index = TiradsToIndex("binary", "kwak")
    assert int(to_index(None)) == UNKNOWN_LEVEL
    assert to_index(["2", None, "5"]).tolist() == [0, UNKNOWN_LEVEL, 1]
    with pytest.raises(UnknownLabelError, match="TR9"):
        to_index("TR9")
