// Package dicomwrite holds what more than one stage needs to make DICOM:
// UIDs derived from names (NewUID), the CT Image Storage writer the
// phantoms and tests use (Series, Instance, Write), the patient and study
// attributes that derived objects copy from their source (StudyAttrs),
// and the frame bound shared by the reader and the SEG writer. Reading
// and decoding stay in ingest/dicomio; the SEG and its SR live in score/seg.
package dicomwrite
