package findings

// Lung-RADS categories estimated from size alone.
const (
	LR2  = "LR2"  // solid nodule under 6 mm
	LR3  = "LR3"  // 6 to under 8 mm
	LR4A = "LR4A" // 8 to under 15 mm
	LR4B = "LR4B" // 15 mm or more
)

// Categories lists the categories in increasing order.
var Categories = []string{LR2, LR3, LR4A, LR4B}

// CategoryBasis labels every category this package makes: it is an
// estimate from the size of the predicted mask alone, as if the nodule
// were solid, not a radiologist's Lung-RADS assessment.
const CategoryBasis = "size-based estimate: solid nodule, longest in-plane diameter of the predicted mask (<6 mm LR2, 6-<8 LR3, 8-<15 LR4A, >=15 LR4B)"

// Category returns the size-based Lung-RADS estimate for a solid nodule
// whose longest diameter is d mm.
func Category(d float64) string {
	switch {
	case d < 6:
		return LR2
	case d < 8:
		return LR3
	case d < 15:
		return LR4A
	}
	return LR4B
}

// Rank orders categories: 1 for LR2 up to 4 for LR4B, 0 for anything
// else. Dataset labels without the "LR" prefix ("4A") are accepted.
func Rank(cat string) int {
	for i, c := range Categories {
		if cat == c || "LR"+cat == c {
			return i + 1
		}
	}
	return 0
}

// AtLeast reports whether cat is at or above the threshold category.
func AtLeast(cat, threshold string) bool {
	r := Rank(cat)
	return r > 0 && r >= Rank(threshold)
}
