package ops

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/broker"
	"github.com/gecholog/broker/kv"
)

func TestStatusRowsKeepThePoolsOrderAndAddUnknownRoutersInKeyOrder(t *testing.T) {
	is := is.New(t)
	now := time.Now()
	policy, err := broker.Policy{DisabledTime: time.Minute}.Resolve()
	is.NoErr(err)
	rec := func(r string) kv.Listed {
		return kv.Listed{Router: r, Entry: broker.Entry{Record: broker.Record{Router: r, At: now, Until: now.Add(time.Minute)}}}
	}
	rows := statusRows(broker.DefaultPools(), policy, []kv.Listed{rec("/z/"), rec("/azure/dud/"), rec("/a/")}, fleetView{}, now)
	var got []string
	for _, r := range rows {
		got = append(got, r.Router+" "+r.State)
	}
	is.Equal(got, []string{
		"/azure/gpt35turbo/ enabled", "/azure/gpt4/ enabled", "/azure/dud/ disabled",
		"/a/ unknown router", "/z/ unknown router",
	})
	var buf bytes.Buffer
	is.NoErr(writeTable(&buf, rows))
	is.Equal(strings.Count(buf.String(), "\n"), 6) // column heads and one line per row
}
