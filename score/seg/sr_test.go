package seg

import (
	"encoding/json"
	"errors"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lungseg/lungseg/pkg/testenv"
	lungsegv1 "github.com/lungseg/lungseg/proto/lungseg/v1"
	"github.com/lungseg/lungseg/score/findings"
)

// srCase is a report made from the scores of a phantom series with a
// second, predicted-only nodule on the image's right (the patient's left)
// on its first two slices, and the findings the findings package groups
// from the same masks.
type srCase struct {
	s        Series
	alg      Algorithm
	frames   []Frame
	findings []*lungsegv1.Finding
	b        []byte
}

func makeSR(t *testing.T, rows, cols, n int, extra bool) srCase {
	t.Helper()
	_, sc := scores(t, rows, cols, n)
	s, alg, frames, err := FromScores(sc)
	if err != nil {
		t.Fatal(err)
	}
	if !extra {
		for _, f := range frames {
			clear(f.Mask.Pix)
		}
	}
	ord := Order(frames)
	for i := 0; extra && i < 2; i++ {
		m := ord[i].Mask
		for y := rows/2 - 3; y < rows/2+3; y++ {
			for x := cols - 12; x < cols-4; x++ {
				m.Pix[y*cols+x] = 1
			}
		}
	}
	ins := make([]findings.SliceInput, len(sc))
	for i := range sc {
		ins[i] = findings.SliceInput{Meta: sc[i].Meta, Model: sc[i].Model, ModelVersion: sc[i].ModelVersion, Pred: frames[i].Mask}
	}
	fs, err := findings.Config{}.Series(ins, findings.CompletedQuiet)
	if err != nil {
		t.Fatal(err)
	}
	s.PatientID, s.PatientName, s.StudyDate, s.StudyTime, s.StudyID = "P-7", "DOE^JANE", "20240102", "101500", "42"
	seg := SEGRef{SeriesUID: DefaultSeriesUID(s, alg), InstanceUID: DefaultInstanceUID(s, alg)}
	b, err := SRBytes(s, alg, frames, seg, NodulesOf(fs, cols), Options{Time: time.Date(2024, 3, 4, 5, 6, 7, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	return srCase{s: s, alg: alg, frames: ord, findings: fs, b: b}
}

func (c srCase) write(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "sr.dcm")
	if err := os.WriteFile(p, c.b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// sameDS: a DS holds at most 16 characters, so a value read back equals
// the finding's to 11 significant digits.
func sameDS(a, b float64) bool { return math.Abs(a-b) <= 1e-10*math.Max(1, math.Abs(b)) }

// TestSRMatchesFindings reads the report back (ReadSR) and checks every
// measurement group against the finding it was made from.
func TestSRMatchesFindings(t *testing.T) {
	c := makeSR(t, 64, 64, 6, true)
	if len(c.findings) < 2 {
		t.Fatalf("%d findings, want the phantom's nodule and the added one", len(c.findings))
	}
	r, err := ReadSR(c.b)
	if err != nil {
		t.Fatal(err)
	}
	if r.SOPClassUID != EnhancedSRStorage || r.Template != "1500" || r.Title != "Imaging Measurement Report" || r.StudyUID != c.s.StudyUID {
		t.Errorf("report %+v", r)
	}
	var want []string
	for _, f := range c.frames {
		want = append(want, f.SOPInstanceUID)
	}
	if !slices.Equal(r.Sources, want) {
		t.Errorf("image library %v, want %v", r.Sources, want)
	}
	if len(r.Groups) != len(c.findings) {
		t.Fatalf("%d groups for %d findings", len(r.Groups), len(c.findings))
	}
	sides := map[string]bool{}
	for i, f := range c.findings {
		g := r.Groups[i]
		if g.TrackingID != f.Id || g.TrackingUID == "" || g.Finding != "Nodule" || g.Site != "Lung" {
			t.Errorf("group %d: %+v for finding %s", i, g, f.Id)
		}
		if !sameDS(g.DiameterMm, f.DiameterMm) || g.DiameterUnit != "mm" || !sameDS(g.VolumeMm3, f.VolumeMm3) || g.VolumeUnit != "mm3" {
			t.Errorf("group %d: %g %s, %g %s; finding %g mm, %g mm³", i, g.DiameterMm, g.DiameterUnit, g.VolumeMm3, g.VolumeUnit, f.DiameterMm, f.VolumeMm3)
		}
		side := map[string]string{LateralityRight: "Right", LateralityLeft: "Left"}[LateralityOf(f.CentroidCol, 64)]
		if g.Laterality != side {
			t.Errorf("group %d: laterality %q, centroid column %g gives %q", i, g.Laterality, f.CentroidCol, side)
		}
		sides[g.Laterality] = true
		if g.SEGInstance != DefaultInstanceUID(c.s, c.alg) || g.Segment != 1 || g.SourceSeries != c.s.SeriesUID {
			t.Errorf("group %d: segment %s #%d of series %s", i, g.SEGInstance, g.Segment, g.SourceSeries)
		}
		if g.AlgorithmName != "unet-lidc" || g.AlgorithmVersion != "2.1.0" {
			t.Errorf("group %d: algorithm %q %q", i, g.AlgorithmName, g.AlgorithmVersion)
		}
		if !strings.Contains(g.Evaluation, "size-based estimate "+f.Category) || !strings.Contains(g.Evaluation, "not a Lung-RADS assessment") {
			t.Errorf("group %d: evaluation %q for %s", i, g.Evaluation, f.Category)
		}
	}
	if !sides["Left"] {
		t.Errorf("the nodule on the image's right has no left laterality: %v", sides)
	}
	// Same input, same report: the UIDs are derived.
	if again := makeSR(t, 64, 64, 6, true); string(again.b) != string(c.b) {
		t.Error("the same series gives a different report")
	}
}

func TestLateralityOf(t *testing.T) {
	for _, tc := range []struct {
		col  float64
		cols int
		want string
	}{
		{10, 512, LateralityRight}, {400, 512, LateralityLeft}, {255.5, 512, ""}, {255.5 - 25, 512, ""},
		{255.5 - 26, 512, LateralityRight}, {255.5 + 26, 512, LateralityLeft}, {3, 0, ""}, {math.NaN(), 512, ""},
	} {
		if got := LateralityOf(tc.col, tc.cols); got != tc.want {
			t.Errorf("LateralityOf(%g, %d) = %q, want %q", tc.col, tc.cols, got, tc.want)
		}
	}
}

type pySR struct {
	SOPClass  string           `json:"sop_class"`
	Title     string           `json:"title"`
	Template  string           `json:"template"`
	PatientID string           `json:"patient_id"`
	Sources   []string         `json:"sources"`
	Evidence  []string         `json:"evidence"`
	Groups    []map[string]any `json:"groups"`
}

// TestSRReadBackPydicom reads the report with Debian's pydicom.
func TestSRReadBackPydicom(t *testing.T) {
	py := testenv.RequirePython(t, "pydicom")
	c := makeSR(t, 64, 64, 6, true)
	out, err := exec.Command(py, "testdata/read_sr.py", c.write(t)).Output()
	if err != nil {
		t.Fatalf("pydicom: %v", err)
	}
	var r pySR
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	if r.SOPClass != EnhancedSRStorage || r.Title != "Imaging Measurement Report" || r.Template != "1500" || r.PatientID != "P-7" {
		t.Errorf("header %+v", r)
	}
	var want []string
	for _, f := range c.frames {
		want = append(want, f.SOPInstanceUID)
	}
	if !slices.Equal(r.Sources, want) {
		t.Errorf("image library %v", r.Sources)
	}
	want = append(want, DefaultInstanceUID(c.s, c.alg))
	slices.Sort(want)
	if !slices.Equal(r.Evidence, want) {
		t.Errorf("evidence %v, want %v", r.Evidence, want)
	}
	if len(r.Groups) != len(c.findings) {
		t.Fatalf("%d groups for %d findings", len(r.Groups), len(c.findings))
	}
	for i, f := range c.findings {
		g := r.Groups[i]
		num := func(k string) (float64, string) {
			m, _ := g[k].(map[string]any)
			v, _ := m["value"].(float64)
			u, _ := m["unit"].(string)
			if s, _ := m["scheme"].(string); s != "UCUM" {
				t.Errorf("group %d: %s in scheme %q", i, k, s)
			}
			return v, u
		}
		d, du := num("Long Axis")
		v, vu := num("Volume")
		if !sameDS(d, f.DiameterMm) || du != "mm" || !sameDS(v, f.VolumeMm3) || vu != "mm3" {
			t.Errorf("group %d: %g %s, %g %s; finding %g mm, %g mm³", i, d, du, v, vu, f.DiameterMm, f.VolumeMm3)
		}
		if g["container"] != "Measurement Group" || g["Tracking Identifier"] != f.Id || g["Finding"] != "Nodule" || g["Finding Site"] != "Lung" ||
			g["Algorithm Name"] != "unet-lidc" || g["Algorithm Version"] != "2.1.0" {
			t.Errorf("group %d: %v", i, g)
		}
		if u, _ := g["Tracking Unique Identifier"].(string); !strings.HasPrefix(u, "2.25.") {
			t.Errorf("group %d: tracking UID %q", i, u)
		}
		side := map[string]string{LateralityRight: "Right", LateralityLeft: "Left"}[LateralityOf(f.CentroidCol, 64)]
		if got, _ := g["Finding Site/Laterality"].(string); got != side {
			t.Errorf("group %d: laterality %q, want %q", i, got, side)
		}
		ref, _ := g["Referenced Segment"].(map[string]any)
		if ref["class"] != SegmentationStorage || ref["instance"] != DefaultInstanceUID(c.s, c.alg) || ref["segment"] != 1.0 {
			t.Errorf("group %d: referenced segment %v", i, ref)
		}
		if g["Source series for segmentation"] != c.s.SeriesUID {
			t.Errorf("group %d: source series %v", i, g["Source series for segmentation"])
		}
		if e, _ := g["Qualitative Evaluations"].(string); !strings.Contains(e, "size-based estimate "+f.Category) {
			t.Errorf("group %d: evaluation %q", i, e)
		}
	}
}

// TestSRDciodvfy validates reports with nodules and without with
// dicom3tools' dciodvfy: no line may start with "Error".
func TestSRDciodvfy(t *testing.T) {
	bin := testenv.RequireCommand(t, "dciodvfy") // Debian dicom3tools
	for _, extra := range []bool{true, false} {
		c := makeSR(t, 64, 64, 5, extra)
		if extra == (len(c.findings) == 0) {
			t.Fatalf("nodules %v: %d findings", extra, len(c.findings))
		}
		out, _ := exec.Command(bin, c.write(t)).CombinedOutput()
		if !strings.Contains(string(out), "EnhancedSR") {
			t.Fatalf("dciodvfy did not recognise an Enhanced SR:\n%s", out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "Error") {
				t.Errorf("dciodvfy (%d nodules): %s", len(c.findings), l)
			}
		}
		t.Logf("dciodvfy (%d nodules):\n%s", len(c.findings), out)
	}
}

// TestSRDsrdump reads the report with dcmtk's dsrdump, which checks the
// content tree against the Enhanced SR IOD's relationship constraints:
// it must exit 0, print no error and show every group's measurements.
func TestSRDsrdump(t *testing.T) {
	bin := testenv.RequireCommand(t, "dsrdump") // Debian dcmtk
	c := makeSR(t, 64, 64, 6, true)
	out, err := exec.Command(bin, "-Ec", "+Pt", c.write(t)).CombinedOutput()
	if err != nil {
		t.Fatalf("dsrdump: %v\n%s", err, out)
	}
	text := string(out)
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "E:") || strings.HasPrefix(l, "F:") {
			t.Errorf("dsrdump: %s", l)
		}
	}
	for _, want := range []string{"Enhanced SR Document", `"Imaging Measurement Report"`, "TID 1500", `"Measurement Group"`, `(mm,UCUM,"millimeter")`, `(mm3,UCUM,"cubic millimeter")`} {
		if !strings.Contains(text, want) {
			t.Errorf("dsrdump output lacks %s:\n%s", want, text)
		}
	}
	for _, f := range c.findings {
		if !strings.Contains(text, `"Tracking Identifier")="`+f.Id+`"`) || !strings.Contains(text, `"Long Axis")="`+formatDS(f.DiameterMm)+`"`) {
			t.Errorf("dsrdump output lacks finding %s (%s mm)", f.Id, formatDS(f.DiameterMm))
		}
	}
	t.Logf("dsrdump:\n%s", out)
}

func TestSRErrors(t *testing.T) {
	c := makeSR(t, 16, 16, 2, true)
	seg := SEGRef{SeriesUID: "1.2.3", InstanceUID: "1.2.3.4"}
	ok := []Nodule{{TrackingID: "f-1", DiameterMm: 6, VolumeMm3: 30}}
	for _, tc := range []struct {
		name    string
		s       Series
		alg     Algorithm
		frames  []Frame
		seg     SEGRef
		nodules []Nodule
		want    error
	}{
		{"no frames", c.s, c.alg, nil, seg, ok, ErrNoFrames},
		{"no study", Series{SeriesUID: "1.2"}, c.alg, c.frames, seg, ok, ErrMissing},
		{"no algorithm", c.s, Algorithm{}, c.frames, seg, ok, ErrMissing},
		{"no SEG", c.s, c.alg, c.frames, SEGRef{}, ok, ErrMissing},
		{"no tracking id", c.s, c.alg, c.frames, seg, []Nodule{{DiameterMm: 6}}, ErrMissing},
		{"NaN diameter", c.s, c.alg, c.frames, seg, []Nodule{{TrackingID: "f-1", DiameterMm: math.NaN()}}, nil},
		{"bad laterality", c.s, c.alg, c.frames, seg, []Nodule{{TrackingID: "f-1", Laterality: "up"}}, nil},
	} {
		_, err := SRDataset(tc.s, tc.alg, tc.frames, tc.seg, tc.nodules, Options{})
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: error %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := SRDataset(c.s, c.alg, c.frames, seg, ok, Options{}); err != nil {
		t.Errorf("valid input: %v", err)
	}
}
