"""The held-out patients' bare nodule crop folders, for Go replays.

    /usr/bin/python3 -m lungseg_train.heldout --split test
    lungseg replay --model all $(cd train && /usr/bin/python3 -m lungseg_train.heldout --split test)

Prints one folder per line: ../shared/data/lidc/ctslicing_vois_hu/<patient>
for each patient of the split that a model card lists (training.split.val or
.test; every shipped card lists the same split), so the crops are replayed as
they lie, never copied. Patients without a crop folder are left out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from . import data as D


def crop_dirs(card_path: str, split: str, data_root: str):
    with open(card_path) as f:
        card = json.load(f)
    patients = card["training"]["split"][split]
    base = os.path.join(data_root, "lidc", "ctslicing_vois_hu")
    return [os.path.join(base, p) for p in patients if os.path.isdir(os.path.join(base, p))]


def main(argv=None) -> int:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=["val", "test"])
    ap.add_argument("--card", default=os.path.join(here, "..", "models", "resnet50-unet-small-crop", "card.json"))
    ap.add_argument("--data", default=None, help="the shared data folder (default ../shared/data)")
    args = ap.parse_args(argv)
    root = args.data or D.default_data_path()
    dirs = crop_dirs(args.card, args.split, root)
    if not dirs:
        print(f"heldout: no crop folder of the {args.split} patients under {root}", file=sys.stderr)
        return 1
    for d in dirs:
        print(os.path.normpath(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
