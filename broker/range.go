package broker

import (
	"cmp"
	"fmt"
)

// Range is the values a setting may take, from Min to Max inclusive. The
// package that owns a setting defines its range once; validation and the
// broker command's flags both read it.
type Range[T cmp.Ordered] struct{ Min, Max T }

// Contains reports whether v is in r. NaN is in no range.
func (r Range[T]) Contains(v T) bool { return v >= r.Min && v <= r.Max }

// String says r as an error message does: "from 1 to 1000".
func (r Range[T]) String() string { return fmt.Sprintf("from %v to %v", r.Min, r.Max) }
