#!/usr/bin/python3
"""Make the tiny DICOM fixtures of ingest/dicomio with Debian's pydicom 2.3.

Run from this folder: /usr/bin/python3 make_fixtures.py
It rewrites the *.dcm files, masks/*.png and expected.json. The HU values
of the good files follow known formulas (not pydicom's decoding), written
to expected.json for the Go tests.
"""
import json
import os
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, RLELossless,
                         DeflatedExplicitVRLittleEndian)

HERE = os.path.dirname(os.path.abspath(__file__))
ROWS, COLS = 12, 16
CT = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
MR = "1.2.840.10008.5.1.4.1.1.4"
expected = {}


def uid(n):
    return "1.2.826.0.1.3680043.10.1234.%d" % n


def base(name, ts=ExplicitVRLittleEndian, sop_class=CT, modality="CT"):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = uid(zlib.crc32(name.encode()) % 100000)
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = uid(1)
    ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.is_little_endian = ts != ExplicitVRBigEndian
    ds.is_implicit_VR = ts == ImplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    if modality is not None:
        ds.Modality = modality
    ds.StudyInstanceUID = uid(10)
    ds.SeriesInstanceUID = uid(11)
    ds.PatientName = "FIXTURE^DICOMIO"
    ds.PatientID = "FIXTURE"
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    return ds


def set_pixels(ds, arr, bits_alloc=16, bits_stored=None, signed=True):
    bits_stored = bits_stored or bits_alloc
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dt = {8: "u1", 16: ("i2" if signed else "u2")}[bits_alloc]
    order = "<" if ds.is_little_endian else ">"
    ds.PixelData = arr.astype(order + dt).tobytes()
    ds["PixelData"].VR = "OB" if bits_alloc == 8 else "OW"


def grid(frames=1):
    f, r, c = np.meshgrid(np.arange(frames), np.arange(ROWS), np.arange(COLS), indexing="ij")
    return f, r, c


def save(ds, name, hu=None, **meta):
    path = os.path.join(HERE, name)
    ds.save_as(path, write_like_original=False)
    if hu is not None:
        hu = np.asarray(hu)
        if hu.ndim == 2:
            hu = hu[None]
        expected[name] = dict(rows=ROWS, cols=COLS,
                              frames=[fr.astype(int).ravel().tolist() for fr in hu], **meta)
    return path


def write_mask(name, rows, cols, box):
    m = np.zeros((rows, cols), np.uint8)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = 255
    os.makedirs(os.path.join(HERE, "masks"), exist_ok=True)
    Image.fromarray(m).save(os.path.join(HERE, "masks", name))
    return int((m > 0).sum())


def main():
    _, r, c = grid()
    r, c = r[0], c[0]

    # 1. Explicit VR little endian, signed 16-bit, intercept 0.
    hu = -1000 + 13 * (r * COLS + c)
    ds = base("ct_explicit_le")
    set_pixels(ds, hu)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.PixelSpacing = [0.5, 0.625]
    ds.ImagePositionPatient = [-80, -80, -12.5]
    ds.SliceLocation = 99  # ImagePositionPatient wins
    save(ds, "ct_explicit_le.dcm", hu, spacing=[0.5, 0.625], assumed=False, positions=[-12.5])
    n = write_mask("ct_explicit_le.png", ROWS, COLS, (2, 6, 3, 9))
    expected["ct_explicit_le.dcm"]["mask_pixels"] = n

    # 2. Implicit VR little endian, unsigned, intercept -1024, no spacing.
    stored = (24 * (r * COLS + c)) % 4000
    ds = base("ct_implicit_unsigned", ImplicitVRLittleEndian)
    set_pixels(ds, stored, signed=False)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    ds.SliceLocation = "33.0"
    save(ds, "ct_implicit_unsigned.dcm", stored - 1024, spacing=[0.7, 0.7], assumed=True, positions=[33.0])

    # 3. Explicit VR big endian, signed, slope 2, position from InstanceNumber.
    stored = -500 + 7 * (r * COLS + c)
    ds = base("ct_big_endian", ExplicitVRBigEndian)
    set_pixels(ds, stored)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -10
    ds.InstanceNumber = 7
    ds.PixelSpacing = [0.9, 0.9]
    save(ds, "ct_big_endian.dcm", 2 * stored - 10, spacing=[0.9, 0.9], assumed=False, positions=[7.0])

    # 4. 8-bit unsigned, slope 4, non-integer intercept (rounded).
    stored = (r * COLS + c) % 256
    ds = base("ct_8bit")
    set_pixels(ds, stored, bits_alloc=8, signed=False)
    ds.RescaleSlope, ds.RescaleIntercept = 4, "-1000.4"
    save(ds, "ct_8bit.dcm", np.round(4 * stored - 1000.4), spacing=[0.7, 0.7], assumed=True, positions=[0.0])

    # 5. 12 bits stored in 16, unsigned, with junk in the 4 high bits (as
    # overlay bits in old files): the reader must mask them. pydicom 2.3
    # does not, so this one is checked against the formula only.
    stored = (50 * (r * COLS + c)) % 4096
    ds = base("ct_12bit_junk")
    set_pixels(ds, stored | 0xA000, bits_stored=12, signed=False)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    save(ds, "ct_12bit_junk.dcm", stored - 1024, spacing=[0.7, 0.7], assumed=True, positions=[0.0], pydicom_differs=True)

    # 6. 12 bits stored, signed (two's complement sign-extended to 16).
    stored = -2048 + (31 * (r * COLS + c)) % 4096
    ds = base("ct_12bit_signed")
    set_pixels(ds, stored, bits_stored=12, signed=True)
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    save(ds, "ct_12bit_signed.dcm", stored, spacing=[0.7, 0.7], assumed=True, positions=[0.0])

    # 7. Enhanced CT style multi-frame: spacing and rescale in the shared
    # functional groups, positions per frame.
    f, r3, c3 = grid(3)
    stored = (f * 500 + 11 * (r3 * COLS + c3)) % 3000
    ds = base("ct_multiframe", sop_class=ENHANCED_CT)
    ds.NumberOfFrames = 3
    set_pixels(ds, stored, signed=False)
    shared = Dataset()
    pm = Dataset()
    pm.PixelSpacing = [0.8, 0.75]
    pm.SliceThickness = 2.5
    shared.PixelMeasuresSequence = Sequence([pm])
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, -1024, "HU"
    shared.PixelValueTransformationSequence = Sequence([pvt])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per = []
    for z in (10.0, 12.5, 15.0):
        it = Dataset()
        pp = Dataset()
        pp.ImagePositionPatient = [-80, -80, z]
        it.PlanePositionSequence = Sequence([pp])
        per.append(it)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    save(ds, "ct_multiframe.dcm", stored - 1024, spacing=[0.8, 0.75], assumed=False, positions=[10.0, 12.5, 15.0])
    n = write_mask("ct_multiframe-f002.png", ROWS, COLS, (0, 3, 0, 2))
    expected["ct_multiframe.dcm"]["mask_pixels_f002"] = n

    # 8. No Modality at all: read as CT (documented choice).
    ds = base("ct_no_modality", modality=None)
    set_pixels(ds, -1000 + 3 * (r * COLS + c))
    save(ds, "ct_no_modality.dcm", -1000 + 3 * (r * COLS + c), spacing=[0.7, 0.7], assumed=True, positions=[0.0])

    # 9. A good file whose mask has another shape.
    ds = base("ct_badmask")
    set_pixels(ds, 0 * r)
    save(ds, "ct_badmask.dcm")
    write_mask("ct_badmask.png", ROWS + 1, COLS, (0, 2, 0, 2))

    # --- Broken files ---
    good = open(os.path.join(HERE, "ct_explicit_le.dcm"), "rb").read()
    # 10. Truncated inside the pixel data, and inside the header.
    open(os.path.join(HERE, "truncated.dcm"), "wb").write(good[:-100])
    open(os.path.join(HERE, "truncated_header.dcm"), "wb").write(good[:300])

    # 11. Rows and Columns of 60000 (beyond imgx.MaxSide) with tiny pixels.
    ds = base("huge_rows")
    set_pixels(ds, 0 * r)
    ds.Rows, ds.Columns = 60000, 60000
    save(ds, "huge_rows.dcm")

    # 12. An element declaring a 4 GiB value right after the file meta
    # header (the parser would allocate it before reading).
    meta_end = 132 + 12 + struct.unpack("<I", good[140:144])[0]
    bad = good[:meta_end] + struct.pack("<HH2sHI", 0x0009, 0x1001, b"OB", 0, 0xFFFFFFF0) + good[meta_end:]
    open(os.path.join(HERE, "huge_length.dcm"), "wb").write(bad)
    # 13. A date with a 0xFFFF (undefined) length: the parser would read a
    # 4 GiB string.
    bad = good[:meta_end] + struct.pack("<HH2sH", 0x0008, 0x0020, b"DA", 0xFFFF) + good[meta_end:]
    open(os.path.join(HERE, "undefined_date.dcm"), "wb").write(bad)

    # 14. A CT object without pixel data.
    ds = base("nonimage")
    save(ds, "nonimage.dcm")

    # 15. An MR image.
    ds = base("non_ct", sop_class=MR, modality="MR")
    set_pixels(ds, 0 * r)
    save(ds, "non_ct.dcm")

    # 16. RLE Lossless (compressed) CT.
    ds = base("rle")
    set_pixels(ds, -1000 + 0 * r)
    ds.compress(RLELossless)
    save(ds, "rle.dcm")

    # 17. Deflated explicit VR little endian.
    ds = base("deflate", DeflatedExplicitVRLittleEndian)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    set_pixels(ds, 0 * r)
    save(ds, "deflate.dcm")

    # 18. No preamble and no file meta header (a raw dataset).
    ds = base("no_preamble")
    set_pixels(ds, 0 * r)
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(os.path.join(HERE, "no_preamble.dcm"), write_like_original=True)

    # 19. Colour (3 samples per pixel).
    ds = base("rgb")
    set_pixels(ds, np.zeros((ROWS, COLS, 3), int), bits_alloc=8, signed=False)
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    save(ds, "rgb.dcm")

    # 20. Pixel data one row short of Rows×Columns.
    ds = base("short_pixels")
    set_pixels(ds, (0 * r)[:-1])
    save(ds, "short_pixels.dcm")

    # --- What an outside probe found accepted without a word (issue 15) ---
    # 21. RescaleIntercept 1e9: every stored value maps beyond int16 HU.
    ds = base("hu_intercept_huge")
    set_pixels(ds, 0 * r)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "1e9"
    save(ds, "hu_intercept_huge.dcm")

    # 22. Unsigned 16 bits, intercept -1024, three pixels at 65535: read,
    # those three clamped to 32767 HU with a warning.
    stored = (24 * (r * COLS + c)) % 4000
    stored[0, :3] = 65535
    ds = base("hu_unsigned_max")
    set_pixels(ds, stored, signed=False)
    ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
    save(ds, "hu_unsigned_max.dcm", np.clip(stored - 1024, -32768, 32767), spacing=[0.7, 0.7], assumed=True,
         positions=[0.0], pydicom_differs=True, clamped=3)

    # 23. PixelSpacing of 1e308 mm.
    ds = base("spacing_huge")
    set_pixels(ds, 0 * r)
    ds.PixelSpacing = ["1e308", "1e308"]
    save(ds, "spacing_huge.dcm")

    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
