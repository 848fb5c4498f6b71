// Package formats lists the input readers ingest knows: pandas pickles of
// the Mendeley dataset, DICOM files, and PNG pairs.
package formats

import (
	"context"
	"strings"

	"github.com/lungseg/lungseg/ingest"
	"github.com/lungseg/lungseg/ingest/dicomio"
	"github.com/lungseg/lungseg/ingest/pickle"
	"github.com/lungseg/lungseg/ingest/pngpair"
)

// All returns every format, most specific match first.
func All() []ingest.Format {
	return []ingest.Format{
		{
			Name:     "pickle",
			LocalIDs: true,
			Match: func(name string, head []byte) bool {
				return ingest.HasExt(name, ".pkl", ".pickle") || (len(head) > 1 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5 && !ingest.HasExt(name, ".png", ".dcm"))
			},
			Read: func(ctx context.Context, path string, o ingest.Options, fn ingest.EmitFunc) error {
				return pickle.Read(ctx, path, fn)
			},
		},
		{
			Name: "dicom",
			Match: func(name string, head []byte) bool {
				return ingest.HasExt(name, ".dcm", ".dicom") || ingest.IsDICOM(head)
			},
			Read: func(ctx context.Context, path string, o ingest.Options, fn ingest.EmitFunc) error {
				return dicomio.Read(ctx, path, o.Root, o.MasksDir, fn)
			},
			// One Decoder per walk: its pixel planes serve every file of
			// the walk, each valid until fn returns.
			Reusing: func() ingest.ReadFunc {
				d := new(dicomio.Decoder)
				return func(ctx context.Context, path string, o ingest.Options, fn ingest.EmitFunc) error {
					return d.Read(ctx, path, o.Root, o.MasksDir, fn)
				}
			},
		},
		{
			Name: "png-pair",
			Match: func(name string, head []byte) bool {
				return strings.HasSuffix(strings.ToLower(name), "_image.png")
			},
			Read: func(ctx context.Context, path string, o ingest.Options, fn ingest.EmitFunc) error {
				return pngpair.Read(ctx, path, o.Root, fn)
			},
		},
	}
}
