import json
import os

from lungseg_train import heldout as H


def test_crop_dirs_lists_existing_split_folders(tmp_path):
    base = tmp_path / "data" / "lidc" / "ctslicing_vois_hu"
    for p in ["LIDC-IDRI-0001", "LIDC-IDRI-0002", "LIDC-IDRI-0009"]:
        (base / p).mkdir(parents=True)
    card = tmp_path / "card.json"
    card.write_text(json.dumps({"training": {"split": {"test": ["LIDC-IDRI-0002", "LIDC-IDRI-0003"],
                                                      "val": ["LIDC-IDRI-0009"]}}}))
    got = H.crop_dirs(str(card), "test", str(tmp_path / "data"))
    assert got == [str(base / "LIDC-IDRI-0002")]  # 0003 has no folder, 0001 is not in the split
    assert H.crop_dirs(str(card), "val", str(tmp_path / "data")) == [str(base / "LIDC-IDRI-0009")]
    assert H.main(["--card", str(card), "--split", "test", "--data", str(tmp_path / "nothing")]) == 1
