#!/bin/sh
# Make the compressed CT fixtures of ingest/dicomio from the uncompressed
# ones (made by make_fixtures.py) with dcmtk 3.6 (dcmcrle, dcmcjpeg,
# dcmdjpeg). Run from this folder: sh make_compressed.sh
# Every file is lossless except jpll_pt2_*.dcm (point transform 2: the two
# low bits are dropped); its decompression by dcmdjpeg is kept beside it as
# the reference. The Go tests compare the decoded HU of each compressed
# file with its source file (see compressedFixtures in encap_test.go).
set -eu
cd "$(dirname "$0")"

# RLE Lossless (1.2.840.10008.1.2.5), basic offset table filled.
dcmcrle ct_explicit_le.dcm rle_ct_explicit_le.dcm
dcmcrle ct_multiframe.dcm rle_multiframe.dcm
dcmcrle ct_8bit.dcm rle_8bit.dcm
dcmcrle ct_12bit_signed.dcm rle_12bit_signed.dcm
# Empty basic offset table: one fragment per frame.
dcmcrle -ot ct_multiframe.dcm rle_multiframe_nobot.dcm

# JPEG Lossless, first-order prediction (1.2.840.10008.1.2.4.70).
dcmcjpeg +e1 ct_explicit_le.dcm jpll_sv1_ct_explicit_le.dcm
dcmcjpeg +e1 ct_multiframe.dcm jpll_sv1_multiframe.dcm
dcmcjpeg +e1 -ot ct_multiframe.dcm jpll_sv1_multiframe_nobot.dcm
dcmcjpeg +e1 ct_8bit.dcm jpll_sv1_8bit.dcm
dcmcjpeg +e1 ct_implicit_unsigned.dcm jpll_sv1_unsigned.dcm
dcmcjpeg +e1 ct_12bit_junk.dcm jpll_sv1_12bit_junk.dcm

# JPEG Lossless process 14 (1.2.840.10008.1.2.4.57), selection values 2-7.
for sv in 2 3 4 5 6 7; do
	dcmcjpeg +el +sv $sv ct_12bit_signed.dcm jpll_sv${sv}_12bit_signed.dcm
done
dcmcjpeg +el +sv 6 ct_multiframe.dcm jpll_sv6_multiframe.dcm

# Point transform 2 (lossy in effect) and dcmtk's decompression of it.
dcmcjpeg +el +sv 1 +pt 2 ct_explicit_le.dcm jpll_pt2_ct_explicit_le.dcm
dcmdjpeg jpll_pt2_ct_explicit_le.dcm jpll_pt2_ct_explicit_le_dcmdjpeg.dcm

# Still rejected: JPEG-LS lossless.
dcmcjpls ct_explicit_le.dcm jpegls.dcm
