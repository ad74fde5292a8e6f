package safetext_test

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/matryer/is"

	"github.com/gecholog/broker/internal/safetext"
)

func TestLineShowsEveryCharacterThatCouldSpoofATerminalOrAPageEscaped(t *testing.T) {
	for _, c := range []struct{ name, in, want string }{
		{"plain text is left alone", "egress_status_code 502, Retry-After 2m0s", "egress_status_code 502, Retry-After 2m0s"},
		{"letters of any script are left alone", "Zürich 東京 مرحبا", "Zürich 東京 مرحبا"},
		{"line breaks and tabs become spaces", "a\nb\r\tc", "a b  c"},
		{"ESC, a C0 control", "\x1b[2Jcleared", `\u001b[2Jcleared`},
		{"DEL", "a\x7fb", `a\u007fb`},
		{"CSI as a C1 control, U+009B", "\u009b31mred", `\u009b31mred`},
		{"CSI as a raw byte, not UTF-8", "\x9b31mred", `\x9b31mred`},
		{"right-to-left override", "/azure/\u202egpt4/", `/azure/\u202egpt4/`},
		{"the other overrides and embeddings", "\u202a\u202b\u202c\u202d", `\u202a\u202b\u202c\u202d`},
		{"bidi isolates", "\u2066\u2067\u2068\u2069", `\u2066\u2067\u2068\u2069`},
		{"marks and the Arabic letter mark", "\u200e\u200f\u061c", `\u200e\u200f\u061c`},
		{"zero-width space, joiners, BOM, soft hyphen", "a\u200bb\u200dc\ufeffd\u00ade", `a\u200bb\u200dc\ufeffd\u00ade`},
		{"line and paragraph separators", "a\u2028b\u2029c", `a\u2028b\u2029c`},
		{"a tag character beyond the BMP", "a\U000e0041b", `a\U000e0041b`},
	} {
		t.Run(c.name, func(t *testing.T) {
			is := is.New(t)
			is.Equal(safetext.Line(c.in), c.want) // escaped as shown
			is.Equal(safetext.Unsafe(c.in), c.in != c.want && !strings.ContainsAny(c.in, "\t\n\r"))
		})
	}
}

func TestClipBoundsWhatIsShownAndSaysHowMuchWasLeftOut(t *testing.T) {
	is := is.New(t)
	long := strings.Repeat("x", 100_000)
	got := safetext.Clip(long, safetext.MaxShown)
	is.Equal(got, strings.Repeat("x", safetext.MaxShown)+"… [99800 more bytes]") // cut at MaxShown, the rest counted
	is.Equal(safetext.Clip("short", safetext.MaxShown), "short")                 // short text is whole
	exact := strings.Repeat("y", safetext.MaxShown)
	is.Equal(safetext.Clip(exact, safetext.MaxShown), exact) // exactly MaxShown is whole

	// An escape is never cut in two, and counts as what it shows.
	got = safetext.Clip("abcd\u202eefgh", 8)
	is.Equal(got, `abcd… [7 more bytes]`) // \u202e would not fit after abcd
	got = safetext.Clip(strings.Repeat("\u202e", 1000), safetext.MaxShown)
	is.True(len(got) < safetext.MaxShown+40)  // bounded, escapes and all
	is.True(!strings.Contains(got, "\u202e")) // and nothing raw
}

func TestCutBoundsDataWithoutEscapingIt(t *testing.T) {
	is := is.New(t)
	is.Equal(safetext.Cut("abc\u202edef", 4), "abc\u202e… [3 more bytes]") // cut after 4 characters, raw
	is.Equal(safetext.Cut("abc", 3), "abc")                                // whole when it fits
}

func TestJSONEscapesWhatSpoofsATerminalAndMeansTheSame(t *testing.T) {
	is := is.New(t)
	in := map[string]string{"reason": "a\u009b31m\u202eb\x7f\U000e0041", "by": "Zürich"}
	doc, err := json.Marshal(in)
	is.NoErr(err)
	safe := safetext.JSON(doc)
	t.Logf("%s", safe)
	for _, raw := range []string{"\u009b", "\u202e", "\x7f", "\U000e0041"} {
		is.True(!strings.Contains(string(safe), raw)) // not raw in the document
	}
	is.True(strings.Contains(string(safe), `\u202e`)) // but escaped
	is.True(strings.Contains(string(safe), "Zürich")) // letters left alone
	var back map[string]string
	is.NoErr(json.Unmarshal(safe, &back))
	is.Equal(back, in) // the same text to a script
}
