package seg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/lungseg/lungseg/internal/phantom"
	"github.com/lungseg/lungseg/pkg/dicomwrite"
	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
)

// scores makes the Score messages a model would give on a phantom series:
// the phantom's nodule masks, shifted by one pixel so they are not the
// truth, in reverse order (the SEG must sort them).
func scores(t *testing.T, rows, cols, n int) ([]phantom.Slice, []*lungsegv1.Score) {
	t.Helper()
	ph := phantom.Generate(21, n, phantom.Options{Rows: rows, Cols: cols, Series: true, MinDiameterMm: 8, EmptyFraction: -1})
	var out []*lungsegv1.Score
	for i := len(ph) - 1; i >= 0; i-- {
		p := ph[i]
		pred := imgx.NewMask(rows, cols)
		for j, v := range p.Mask.Pix {
			if v != 0 && j+1 < len(pred.Pix) {
				pred.Pix[j+1] = 1
			}
		}
		out = append(out, &lungsegv1.Score{
			Meta: &lungsegv1.SliceMeta{Id: p.InstanceUID, StudyUid: p.StudyUID, SeriesUid: p.SeriesUID, InstanceUid: p.InstanceUID,
				Frame: 1, Rows: int32(rows), Cols: int32(cols), SpacingRowMm: p.SpacingMm, SpacingColMm: p.SpacingMm, SlicePosition: p.PositionMm},
			Model: "unet-lidc", ModelVersion: "2.1.0", PredBits: pred.PackBits(), PredictedPixels: int64(pred.Count()),
		})
	}
	return ph, out
}

func makeSEG(t *testing.T, rows, cols, n int) ([]phantom.Slice, []Frame, []byte) {
	t.Helper()
	ph, sc := scores(t, rows, cols, n)
	s, alg, frames, err := FromScores(sc)
	if err != nil {
		t.Fatal(err)
	}
	s.PatientID, s.PatientName, s.StudyDate, s.StudyTime, s.StudyID = "P-7", "DOE^JANE", "20240102", "101500", "42"
	alg.Parameters = "threshold=0.5"
	b, err := Bytes(s, alg, frames, Options{Time: time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return ph, Order(frames), b
}

func TestFromScoresOrdersAndUnpacks(t *testing.T) {
	ph, sc := scores(t, 24, 16, 5)
	s, alg, frames, err := FromScores(sc)
	if err != nil {
		t.Fatal(err)
	}
	if s.StudyUID != ph[0].StudyUID || s.SeriesUID != ph[0].SeriesUID || s.SpacingRowMm != ph[0].SpacingMm {
		t.Errorf("series %+v", s)
	}
	if alg.Name != "unet-lidc" || alg.Version != "2.1.0" {
		t.Errorf("algorithm %+v", alg)
	}
	ord := Order(frames)
	for i, f := range ord {
		if f.SOPInstanceUID != ph[i].InstanceUID || f.SOPClassUID != dicomwrite.CTImageStorage || f.FrameNumber != 0 {
			t.Errorf("frame %d: %+v, want instance %s", i, f, ph[i].InstanceUID)
		}
		if f.Mask.Count() != ph[i].Mask.Count()-boolInt(ph[i].Mask.Pix[len(ph[i].Mask.Pix)-1] != 0) {
			t.Errorf("frame %d: %d pixels, phantom %d", i, f.Mask.Count(), ph[i].Mask.Count())
		}
	}
	// Mixed series or models, repeated slices, bad bits.
	bad := func(mut func(s []*lungsegv1.Score) []*lungsegv1.Score) error {
		_, sc := scores(t, 24, 16, 3)
		_, _, _, err := FromScores(mut(sc))
		return err
	}
	for name, mut := range map[string]func(s []*lungsegv1.Score) []*lungsegv1.Score{
		"other series": func(s []*lungsegv1.Score) []*lungsegv1.Score { s[1].Meta.SeriesUid = "1.2.3"; return s },
		"other model":  func(s []*lungsegv1.Score) []*lungsegv1.Score { s[2].Model = "x"; return s },
		"repeated":     func(s []*lungsegv1.Score) []*lungsegv1.Score { return append(s, s[0]) },
		"short bits":   func(s []*lungsegv1.Score) []*lungsegv1.Score { s[0].PredBits = s[0].PredBits[:3]; return s },
		"no meta":      func(s []*lungsegv1.Score) []*lungsegv1.Score { s[0].Meta = nil; return s },
		"none":         func(s []*lungsegv1.Score) []*lungsegv1.Score { return nil },
	} {
		if err := bad(mut); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestReadBackGo reads the SEG with suyashkumar/dicom (whose 1-bit reader
// needs rows×cols to be a multiple of 8, as it is for CT) and compares
// every frame with the predicted masks.
func TestReadBackGo(t *testing.T) {
	_, frames, b := makeSEG(t, 48, 40, 6)
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func(tg tag.Tag) string {
		e, err := ds.FindElementByTag(tg)
		if err != nil {
			t.Fatalf("%v: %v", tg, err)
		}
		return strings.Trim(strings.Join(dicom.MustGetStrings(e.Value), "\\"), " \x00")
	}
	for tg, want := range map[tag.Tag]string{
		tag.SOPClassUID: SegmentationStorage, tag.Modality: "SEG", tag.SegmentationType: "BINARY",
		tag.NumberOfFrames: "6", tag.PatientID: "P-7", tag.ContentDate: "20240304", tag.ContentTime: "050607",
	} {
		if got := get(tg); got != want {
			t.Errorf("%s = %q, want %q", tag.DebugString(tg), got, want)
		}
	}
	pd, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		t.Fatal(err)
	}
	info := dicom.MustGetPixelDataInfo(pd.Value)
	if len(info.Frames) != len(frames) {
		t.Fatalf("%d frames, want %d", len(info.Frames), len(frames))
	}
	// suyashkumar/dicom v1.1.0 unpacks 1-bit pixels most significant bit
	// first, where PS3.5 §8.1.1 (and pydicom, see TestReadBackPydicom)
	// puts the first pixel in the least significant bit: its pixel j is
	// bit 7-j%8 of byte j/8, our pixel (j&^7)|(7-j&7).
	nonEmpty := 0
	for i, fr := range info.Frames {
		nd := fr.NativeData
		for j := range frames[i].Mask.Pix {
			want := frames[i].Mask.Pix[(j&^7)|(7-j&7)]
			got, err := nd.GetPixel(j%40, j/40)
			if err != nil || len(got) != 1 || got[0] != int(want) {
				t.Fatalf("frame %d pixel %d: %v %v, want %d", i, j, got, err, want)
			}
		}
		if frames[i].Mask.Count() > 0 {
			nonEmpty++
		}
	}
	if nonEmpty == 0 {
		t.Fatal("all predicted masks are empty: the test would not see a packing error")
	}
	// The raw value, unpacked in the standard order, is the masks back to
	// back.
	raw, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipProcessingPixelDataValue())
	if err != nil {
		t.Fatal(err)
	}
	rpd, _ := raw.FindElementByTag(tag.PixelData)
	data := dicom.MustGetPixelDataInfo(rpd.Value).UnprocessedValueData
	k := 0
	for i, f := range frames {
		for j, v := range f.Mask.Pix {
			if got := data[k/8] >> (k % 8) & 1; got != v {
				t.Fatalf("frame %d pixel %d: bit %d, want %d", i, j, got, v)
			}
			k++
		}
	}
	if len(data) != (k+7)/8+((k+7)/8)%2 {
		t.Errorf("pixel data is %d bytes for %d bits", len(data), k)
	}
	// Each frame refers to its source instance.
	pf, _ := ds.FindElementByTag(tag.PerFrameFunctionalGroupsSequence)
	items := pf.Value.GetValue().([]*dicom.SequenceItemValue)
	for i, it := range items {
		var uids []string
		walk(it.GetValue().([]*dicom.Element), func(e *dicom.Element) {
			if e.Tag == tag.ReferencedSOPInstanceUID {
				uids = append(uids, dicom.MustGetStrings(e.Value)...)
			}
		})
		if len(uids) != 1 || strings.TrimRight(uids[0], "\x00 ") != frames[i].SOPInstanceUID {
			t.Errorf("frame %d refers to %v, want %s", i, uids, frames[i].SOPInstanceUID)
		}
	}
}

func walk(es []*dicom.Element, fn func(*dicom.Element)) {
	for _, e := range es {
		fn(e)
		if e.Value != nil && e.Value.ValueType() == dicom.Sequences {
			for _, it := range e.Value.GetValue().([]*dicom.SequenceItemValue) {
				walk(it.GetValue().([]*dicom.Element), fn)
			}
		}
	}
}

type pyResult struct {
	SOPClass  string   `json:"sop_class"`
	Rows      int      `json:"rows"`
	Cols      int      `json:"cols"`
	Frames    int      `json:"frames"`
	Type      string   `json:"type"`
	Algorithm []string `json:"algorithm"`
	Label     string   `json:"label"`
	Property  string   `json:"property"`
	Study     string   `json:"study"`
	PatientID string   `json:"patient_id"`
	Refs      []string `json:"referenced"`
	PerFrame  []struct {
		Instance string `json:"instance"`
		Class    string `json:"class"`
		Frame    int    `json:"frame"`
		Segment  int    `json:"segment"`
		Index    []int  `json:"index"`
		Set      []int  `json:"set"`
	} `json:"per_frame"`
}

// TestReadBackPydicom reads the SEG with Debian's pydicom, at a size
// whose frames do not end on byte boundaries (33×31), so the bit packing
// across frames is checked.
func TestReadBackPydicom(t *testing.T) {
	py := testenv.RequirePython(t, "pydicom", "numpy")
	for _, size := range [][2]int{{33, 31}, {48, 40}} {
		ph, frames, b := makeSEG(t, size[0], size[1], 5)
		path := filepath.Join(t.TempDir(), "seg.dcm")
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(py, "testdata/read_seg.py", path).Output()
		if err != nil {
			t.Fatalf("pydicom: %v", err)
		}
		var r pyResult
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		if r.SOPClass != SegmentationStorage || r.Rows != size[0] || r.Cols != size[1] || r.Frames != 5 || r.Type != "BINARY" {
			t.Errorf("%v: header %+v", size, r)
		}
		if !slices.Equal(r.Algorithm, []string{"unet-lidc", "unet-lidc", "2.1.0"}) || r.Label != "Nodule" || r.Property != "Nodule" {
			t.Errorf("segment %v %q %q", r.Algorithm, r.Label, r.Property)
		}
		if r.Study != ph[0].StudyUID || r.PatientID != "P-7" || len(r.Refs) != 5 {
			t.Errorf("study %s patient %s refs %d", r.Study, r.PatientID, len(r.Refs))
		}
		for i, f := range r.PerFrame {
			var want []int
			for j, v := range frames[i].Mask.Pix {
				if v != 0 {
					want = append(want, j)
				}
			}
			if want == nil {
				want = []int{}
			}
			if !slices.Equal(f.Set, want) {
				t.Errorf("%v frame %d: pydicom sees %d set pixels, want %d", size, i, len(f.Set), len(want))
			}
			if f.Instance != frames[i].SOPInstanceUID || f.Class != dicomwrite.CTImageStorage || f.Frame != 0 || f.Segment != 1 || !slices.Equal(f.Index, []int{1, i + 1}) {
				t.Errorf("%v frame %d: %+v", size, i, f)
			}
		}
	}
}

// TestDciodvfy validates the SEG with dicom3tools' dciodvfy where it is
// installed (apt-get install dicom3tools): no line may start with
// "Error".
func TestDciodvfy(t *testing.T) {
	bin := testenv.RequireCommand(t, "dciodvfy") // Debian dicom3tools
	_, _, b := makeSEG(t, 48, 40, 4)
	path := filepath.Join(t.TempDir(), "seg.dcm")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(bin, path).CombinedOutput()
	if !strings.Contains(string(out), "Segmentation") {
		t.Fatalf("dciodvfy did not recognise a Segmentation:\n%s", out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "Error") {
			t.Errorf("dciodvfy: %s", l)
		}
	}
	t.Logf("dciodvfy:\n%s", out)
}

func TestMultiFrameSource(t *testing.T) {
	_, sc := scores(t, 16, 16, 3)
	for i, s := range sc {
		s.Meta.InstanceUid = "1.2.3.4"
		// Scores come last slice first: frame 3 is at the lowest position.
		s.Meta.Frame = int32(len(sc) - i)
		s.Meta.Id = fmt.Sprintf("1.2.3.4-f%03d", s.Meta.Frame)
	}
	_, _, frames, err := FromScores(sc)
	if err != nil {
		t.Fatal(err)
	}
	ds, err := Dataset(Series{StudyUID: "1.2", SeriesUID: "1.2.3"}, Algorithm{Name: "m"}, frames, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var refFrames []string
	var refs int
	walk(ds.Elements, func(e *dicom.Element) {
		switch e.Tag {
		case tag.ReferencedFrameNumber:
			refFrames = append(refFrames, dicom.MustGetStrings(e.Value)...)
		case tag.ReferencedInstanceSequence:
			refs = len(e.Value.GetValue().([]*dicom.SequenceItemValue))
		}
	})
	if !slices.Equal(refFrames, []string{"1", "2", "3"}) || refs != 1 {
		t.Errorf("referenced frames %v, %d referenced instances; want 1 2 3 and 1", refFrames, refs)
	}
}

func TestDatasetErrors(t *testing.T) {
	m := imgx.NewMask(8, 8)
	ok := Frame{SOPClassUID: "1.2", SOPInstanceUID: "1.2.3", Mask: m}
	s := Series{StudyUID: "1.2", SeriesUID: "1.2.3"}
	alg := Algorithm{Name: "m", Version: "1"}
	cases := []struct {
		name   string
		s      Series
		alg    Algorithm
		frames []Frame
		want   error
	}{
		{"no frames", s, alg, nil, ErrNoFrames},
		{"no study", Series{SeriesUID: "1"}, alg, []Frame{ok}, ErrMissing},
		{"no model", s, Algorithm{}, []Frame{ok}, ErrMissing},
		{"no mask", s, alg, []Frame{{SOPClassUID: "1", SOPInstanceUID: "2"}}, ErrMissing},
		{"no instance", s, alg, []Frame{{SOPClassUID: "1", Mask: m}}, ErrMissing},
		{"sizes differ", s, alg, []Frame{ok, {SOPClassUID: "1", SOPInstanceUID: "2", Mask: imgx.NewMask(8, 9)}}, ErrShape},
	}
	for _, c := range cases {
		if _, err := Dataset(c.s, c.alg, c.frames, Options{}); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := Dataset(s, alg, []Frame{{SOPClassUID: "1", SOPInstanceUID: "2", Mask: &imgx.Mask{Rows: 1 << 20, Cols: 1}}}, Options{}); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("too large: %v", err)
	}
	// Same input, same UIDs (a re-run replaces the SEG on the PACS).
	a, _ := Bytes(s, alg, []Frame{ok}, Options{Time: time.Unix(0, 0)})
	b, _ := Bytes(s, alg, []Frame{ok}, Options{Time: time.Unix(0, 0)})
	if !bytes.Equal(a, b) {
		t.Error("the same SEG written twice differs")
	}
}
