package pickle_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/pickle"
	"github.com/lungseg/lungseg/pkg/testenv"
)

// TestSeriesColumn writes rows with a series (the writer adds a
// series_uid column) and reads each row's Meta.SeriesUid back; a frame
// without the column (the Mendeley layout) gives none. pandas reads the
// column when it is installed.
func TestSeriesColumn(t *testing.T) {
	rows := []pickle.Row{phantomRow(1, 6, 6, true), phantomRow(2, 6, 6, true), phantomRow(3, 6, 6, true)}
	want := []string{"1.2.3.4", "1.2.3.4", "patient-9"}
	for i := range rows {
		rows[i].Series = want[i]
	}
	read := func(path string) []string {
		var got []string
		if err := pickle.Read(context.Background(), path, func(it ingest.Item) error {
			if it.Err != nil {
				t.Fatal(it.Err)
			}
			got = append(got, it.Meta.SeriesUid)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return got
	}
	path := writeRows(t, rows)
	if got := read(path); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("series %q, want %q", got, want)
	}
	f, err := pickle.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if c := f.Columns(); c[len(c)-1] != pickle.ColSeries {
		t.Errorf("columns %v, want %s last", c, pickle.ColSeries)
	}
	f.Close()
	for i := range rows {
		rows[i].Series = ""
	}
	if got := read(writeRows(t, rows)); strings.Join(got, "") != "" {
		t.Errorf("without a series column: series %q", got)
	}
	if _, err := exec.LookPath("/usr/bin/python3"); err != nil {
		return
	}
	py := testenv.RequirePython(t, "pandas", "numpy")
	out, err := exec.Command(py, "-c", "import sys, pandas as pd; print(','.join(pd.read_pickle(sys.argv[1])['series_uid']))", path).CombinedOutput()
	if err != nil {
		t.Fatalf("pandas: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != strings.Join(want, ",") {
		t.Errorf("pandas reads series_uid %q, want %q", got, strings.Join(want, ","))
	}
}

// TestPatientColumn: a pickle made by pandas with a patient_id column
// groups its rows by patient, with a digest of the id as the series: the
// id itself never goes into a message.
func TestPatientColumn(t *testing.T) {
	py := testenv.RequirePython(t, "pandas", "numpy")
	path := filepath.Join(t.TempDir(), "patients.pkl")
	script := `import sys, numpy as np, pandas as pd
rows = []
for pid in ["LIDC-IDRI-0007", "LIDC-IDRI-0007", "LIDC-IDRI-0008"]:
    hu = np.full((4, 4), -800.0)
    rows.append({"label1": "LR2", "mask": np.zeros((4, 4), np.int8), "hu_array_old": hu, "hu_array": hu, "patient_id": pid})
pd.DataFrame(rows).to_pickle(sys.argv[1])
`
	if out, err := exec.Command(py, "-c", script, path).CombinedOutput(); err != nil {
		t.Fatalf("pandas: %v\n%s", err, out)
	}
	var got []string
	if err := pickle.Read(context.Background(), path, func(it ingest.Item) error {
		if it.Err != nil {
			t.Fatal(it.Err)
		}
		got = append(got, it.Meta.SeriesUid)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0] != got[1] || got[1] == got[2] || !strings.HasPrefix(got[0], "patient-") || strings.Contains(strings.Join(got, ""), "IDRI") {
		t.Errorf("series %q: want one digest per patient, never the id", got)
	}
}
