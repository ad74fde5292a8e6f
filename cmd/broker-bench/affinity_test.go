package main

import (
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"
)

// cachedTokens asks c for a completion of session's call t and returns
// the prompt and cached tokens its usage says.
func cachedTokens(t *testing.T, c *promptCache, s *affSession, call int) (prompt, cached int) {
	t.Helper()
	is := is.New(t)
	cc := s.call(call)
	w := httptest.NewRecorder()
	c.ServeHTTP(w, httptest.NewRequest("POST", "/", strings.NewReader(string(cc.Body))))
	is.Equal(w.Code, 200)
	var answer struct {
		Usage struct {
			Prompt  int `json:"prompt_tokens"`
			Details struct {
				Cached int `json:"cached_tokens"`
			} `json:"prompt_tokens_details"`
		} `json:"usage"`
	}
	is.NoErr(json.Unmarshal(w.Body.Bytes(), &answer))
	return answer.Usage.Prompt, answer.Usage.Details.Cached
}

// The stand-in deployment bills a conversation's prefix as cached when
// the conversation comes back within the cache lifetime, and only there.
func TestPromptCacheReportsCachedTokensWhenAConversationComesBack(t *testing.T) {
	is := is.New(t)
	now := time.Unix(1_764_000_000, 0)
	clock := func() time.Time { return now }
	here, there := &promptCache{now: clock}, &promptCache{now: clock}
	s, other := &affSession{n: 1, ingress: "/aff/"}, &affSession{n: 2, ingress: "/aff/"}

	p0, c0 := cachedTokens(t, here, s, 0)
	is.Equal(c0, 0) // a new conversation: nothing cached
	p1, c1 := cachedTokens(t, here, s, 1)
	is.True(p1 > p0)         // the conversation grows
	is.Equal(c1, p0/128*128) // its earlier prompt, in blocks of 128
	_, c := cachedTokens(t, there, s, 2)
	is.Equal(c, 0) // another deployment never saw it
	_, c = cachedTokens(t, here, other, 0)
	is.Equal(c, 0) // nor another conversation
	now = now.Add(cacheLifetime)
	_, c = cachedTokens(t, here, s, 2)
	is.Equal(c, p1/128*128) // back within the lifetime: the longest prompt seen
	now = now.Add(cacheLifetime + time.Second)
	_, c = cachedTokens(t, here, s, 3)
	is.Equal(c, 0) // after it: gone
	is.Equal(here.calls.Load(), int64(5))
	is.Equal(here.hits.Load(), int64(2))
}

// A session's calls are gecholog's: the first without Session-Id, each
// next with the id the previous one was given, which names the session in
// its first three parts.
func TestASessionsCallsCarryTheIdTheirPreviousCallWasGiven(t *testing.T) {
	is := is.New(t)
	s := &affSession{n: 7, ingress: "/aff/"}
	is.Equal(s.call(0).Headers.Get("Session-Id"), "") // gecholog starts the session
	is.Equal(s.call(1).Headers.Get("Session-Id"), s.call(0).SessionID)
	is.Equal(s.call(2).Headers.Get("Session-Id"), s.call(1).SessionID)
	parts := strings.Split(s.call(2).SessionID, "_")
	is.Equal(len(parts), 4) // GATEWAYID_UNIXNANO_COUNT_TRANSACTION
	is.Equal(parts[3], "2")
	is.Equal(strings.Join(strings.Split(s.call(0).SessionID, "_")[:3], "_"), strings.Join(parts[:3], "_")) // one session
}
