"""scripts.stack_4d: a folder of cases to the 4D studies MONAI Label serves."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from scripts.stack_4d import main


def test_every_good_case_is_stacked_in_sequence_order_on_its_grid(tmp_path, data_write_case):
    cases = {name: data_write_case(tmp_path / "in" / name, name, seed=i) for i, name in enumerate(("a", "b", "bad"))}
    (cases["bad"]["t2"]).unlink()
    written = main(str(tmp_path / "in"), str(tmp_path / "studies"))
    assert sorted(written) == [str(tmp_path / "studies" / f"{name}.nii.gz") for name in ("a", "b")]
    for name in ("a", "b"):
        study = nib.load(str(tmp_path / "studies" / f"{name}.nii.gz"))
        t1 = nib.load(str(cases[name]["t1"]))
        assert study.shape == (*t1.shape, 4)
        np.testing.assert_array_equal(study.affine, t1.affine)
        for channel, sequence in enumerate(("t1", "t1ce", "t2", "flair")):
            expected = np.asarray(nib.load(str(cases[name][sequence])).dataobj)
            np.testing.assert_array_equal(np.asarray(study.dataobj)[..., channel], expected)


def test_a_folder_without_a_good_case_is_an_error(tmp_path, data_write_case):
    case = data_write_case(tmp_path / "in" / "only", "only")
    case["flair"].unlink()
    with pytest.raises(ValueError, match="no case"):
        main(str(tmp_path / "in"), str(tmp_path / "studies"))
