package augment_test

import (
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/lungseg/lungseg/pkg/imgx"
	"github.com/lungseg/lungseg/preprocess/augment"
	"golang.org/x/image/draw"
	"golang.org/x/image/math/f64"
)

var sizes = []int{512, 256}

func benchTransform(b *testing.B, tr augment.Transform) {
	for _, n := range sizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			img, m := disc(n, n, float64(n)/2, float64(n)/3, float64(n)/10)
			r := rand.New(rand.NewPCG(1, 2))
			b.ReportAllocs()
			for b.Loop() {
				var p augment.Params
				if _, _, err := tr.Apply(img, m, r, &p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkRotate(b *testing.B) {
	benchTransform(b, augment.Rotate{MaxDeg: 30, Fill: augment.AirHU})
}
func BenchmarkFlip(b *testing.B) { benchTransform(b, augment.Flip{H: 0.5, V: 0.5}) }
func BenchmarkElastic(b *testing.B) {
	benchTransform(b, augment.Elastic{Alpha: augment.DefaultAlpha, Sigma: augment.DefaultSigma, Fill: augment.AirHU})
}
func BenchmarkIntensity(b *testing.B) {
	benchTransform(b, augment.Intensity{Brightness: 0.1, Contrast: 0.1, Window: &augment.LungWindow})
}

// BenchmarkResize resizes an n×n slice to 256×256 (512: down, 256: a
// copy) and to 512×512 (up).
func BenchmarkResize(b *testing.B) {
	for _, to := range []int{256, 512} {
		b.Run(fmt.Sprint("to", to), func(b *testing.B) { benchTransform(b, augment.Resize{Rows: to, Cols: to}) })
	}
}

// BenchmarkDefaultPipeline runs augment.Default(256): resize first, then
// rotation, flips, elastic and intensity.
func BenchmarkDefaultPipeline(b *testing.B) {
	pl, err := augment.New(augment.Default(256, augment.LungWindow))
	if err != nil {
		b.Fatal(err)
	}
	for _, n := range sizes {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			img, m := disc(n, n, float64(n)/2, float64(n)/3, float64(n)/10)
			r := rand.New(rand.NewPCG(1, 2))
			for b.Loop() {
				if _, _, _, err := pl.Apply(img, m, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// gray16 stores HU+1024 as image.Gray16, the only way to feed HU to
// x/image/draw without a custom (and slower, At()-based) image type.
func gray16(img *imgx.Float) *image.Gray16 {
	g := image.NewGray16(image.Rect(0, 0, img.Cols, img.Rows))
	for i, v := range img.Pix {
		u := int(math.Round(float64(v))) + 1024
		g.Pix[2*i], g.Pix[2*i+1] = uint8(u>>8), uint8(u)
	}
	return g
}

func fromGray16(g *image.Gray16) []float32 {
	v := make([]float32, len(g.Pix)/2)
	for i := range v {
		v[i] = float32(int(g.Pix[2*i])<<8|int(g.Pix[2*i+1])) - 1024
	}
	return v
}

func maxAbs(a, b []float32) float64 {
	m := 0.0
	for i := range a {
		m = max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

// BenchmarkXImageResize scales a 512×512 HU slice (as Gray16) to 256×256
// with golang.org/x/image/draw, for comparison with BenchmarkResize; the
// maxdiff_HU metric is the largest difference from imgx.ResizeBilinear
// (PyTorch's align_corners=False bilinear, what the preprocess stage
// uses). BiLinear widens its kernel when shrinking (antialiasing), so it
// differs by design; ApproxBiLinear is plain bilinear.
func BenchmarkXImageResize(b *testing.B) {
	img, _ := noise(512, 512, 3)
	// Quantise to whole HU, as Gray16 holds them, so maxdiff measures the
	// resampling, not the rounding.
	for i, v := range img.Pix {
		img.Pix[i] = float32(math.Round(float64(v)))
	}
	ref := imgx.ResizeBilinear(img.Pix, 512, 512, 256, 256)
	for _, c := range []struct {
		name string
		s    draw.Scaler
	}{{"BiLinear", draw.BiLinear}, {"ApproxBiLinear", draw.ApproxBiLinear}} {
		b.Run(c.name, func(b *testing.B) {
			src := gray16(img)
			dst := image.NewGray16(image.Rect(0, 0, 256, 256))
			for b.Loop() {
				c.s.Scale(dst, dst.Bounds(), src, src.Bounds(), draw.Src, nil)
			}
			b.ReportMetric(maxAbs(fromGray16(dst), ref), "maxdiff_HU")
		})
	}
	b.Run("imgx.ResizeBilinear", func(b *testing.B) {
		for b.Loop() {
			imgx.ResizeBilinear(img.Pix, 512, 512, 256, 256)
		}
	})
}

// BenchmarkXImageRotate rotates a 512×512 slice by 17° with
// x/image/draw's BiLinear.Transform (Gray16, air pre-filled), for
// comparison with RotateBy; maxdiff_HU is the largest difference from
// RotateBy inside the inscribed circle (at the edge of the rotated
// footprint x/image does not blend with the fill value).
func BenchmarkXImageRotate(b *testing.B) {
	const n, deg = 512, 17.0
	img, _ := noise(n, n, 4)
	for i, v := range img.Pix {
		img.Pix[i] = float32(math.Round(float64(v)))
	}
	ref, _ := augment.RotateBy(img, nil, deg, augment.AirHU)
	b.Run("x/image BiLinear.Transform", func(b *testing.B) {
		src := gray16(img)
		dst := image.NewGray16(image.Rect(0, 0, n, n))
		a := deg * math.Pi / 180
		c, s := math.Cos(a), math.Sin(a)
		// x/image maps source to destination pixel centres: dst = A·src.
		o := float64(n) / 2
		aff := f64.Aff3{c, s, o - c*o - s*o, -s, c, o + s*o - c*o}
		for b.Loop() {
			for i := range dst.Pix {
				dst.Pix[i] = 0 // -1024 HU
			}
			draw.BiLinear.Transform(dst, aff, src, src.Bounds(), draw.Src, nil)
		}
		got := fromGray16(dst)
		worst := 0.0
		c0 := float64(n-1) / 2
		for y := 0; y < n; y++ {
			for x := 0; x < n; x++ {
				if math.Hypot(float64(x)-c0, float64(y)-c0) < c0-2 {
					worst = max(worst, math.Abs(float64(got[y*n+x]-ref.Pix[y*n+x])))
				}
			}
		}
		b.ReportMetric(worst, "maxdiff_HU")
	})
	b.Run("RotateBy", func(b *testing.B) {
		for b.Loop() {
			augment.RotateBy(img, nil, deg, augment.AirHU)
		}
	})
}
