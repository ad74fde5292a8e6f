package gecholog

import (
	"github.com/gecholog/broker/broker"
)

// Token usage, read from the upstream's answer as gecholog logs it in
// response.inbound_payload, in the same pass as the rest of the
// transaction. Only the answer is read, never the prompt.
//
// OpenAI and Azure OpenAI say usage.prompt_tokens, completion_tokens and
// prompt_tokens_details.cached_tokens (part of the prompt's); OpenAI's
// Responses API says usage.input_tokens, output_tokens and
// input_tokens_details.cached_tokens (part of the input's); Anthropic
// says usage.input_tokens, output_tokens, cache_read_input_tokens and
// cache_creation_input_tokens (neither part of input_tokens).
//
// A streamed answer is no JSON: gecholog logs its body as one JSON string
// (cmd/gl's outboundInboundPayloadMiddleware stores a body that is not
// JSON quoted), the server-sent events "data: {...}\n\n" one after the
// other. Each usage field then takes the last value any event's usage
// says: OpenAI's last chunk carries the whole usage when the client asked
// for it (stream_options.include_usage); Anthropic's message_start says
// the input in message.usage, and its message_delta the output so far.

// A count of one usage field as read: absent, a number of tokens, or
// something that cannot be one.
type tokenCount struct {
	n     int64
	state uint8
}

const (
	countAbsent uint8 = iota
	countSet
	countBad
)

// usageFields are the usage fields of one answer, or of one event of a
// streamed one.
type usageFields struct {
	prompt, completion, promptCached tokenCount // OpenAI's chat completions
	input, output, inputCached       tokenCount // Anthropic's and OpenAI's Responses API
	cacheRead, cacheCreation         tokenCount // Anthropic's
	bad                              bool       // usage itself is not an object
}

// The keys read in a usage object, and in its details.
var (
	usageKeys   = []string{"prompt_tokens", "completion_tokens", "prompt_tokens_details", "input_tokens", "output_tokens", "input_tokens_details", "cache_read_input_tokens", "cache_creation_input_tokens"}
	detailsKeys = []string{"cached_tokens"}
	payloadKeys = []string{"usage"}
	eventKeys   = []string{"usage", "message"}
)

// merge takes every field o says over f's.
func (f *usageFields) merge(o *usageFields) {
	for _, p := range [...]struct{ to, from *tokenCount }{
		{&f.prompt, &o.prompt}, {&f.completion, &o.completion}, {&f.promptCached, &o.promptCached},
		{&f.input, &o.input}, {&f.output, &o.output}, {&f.inputCached, &o.inputCached},
		{&f.cacheRead, &o.cacheRead}, {&f.cacheCreation, &o.cacheCreation},
	} {
		if p.from.state != countAbsent {
			*p.to = *p.from
		}
	}
	f.bad = f.bad || o.bad
}

// usage is what the fields say: unreadable when a field read cannot be a
// count, or cached tokens are more than the input they are part of;
// unknown when neither the prompt's (input's) nor the completion's
// (output's) tokens are said. Chat completions' fields win over the
// others when both are said.
func (f *usageFields) usage() broker.Usage {
	if f.bad {
		return broker.Usage{State: broker.UsageUnreadable}
	}
	for _, c := range [...]tokenCount{f.prompt, f.completion, f.promptCached, f.input, f.output, f.inputCached, f.cacheRead, f.cacheCreation} {
		if c.state == countBad {
			return broker.Usage{State: broker.UsageUnreadable}
		}
	}
	switch {
	case f.prompt.state == countSet || f.completion.state == countSet:
		if f.promptCached.n > f.prompt.n {
			return broker.Usage{State: broker.UsageUnreadable}
		}
		return broker.Usage{State: broker.UsageKnown, Input: f.prompt.n - f.promptCached.n, Output: f.completion.n, CachedInput: f.promptCached.n}
	case f.input.state == countSet || f.output.state == countSet:
		if f.inputCached.n > f.input.n {
			return broker.Usage{State: broker.UsageUnreadable}
		}
		return broker.Usage{State: broker.UsageKnown, Input: f.input.n - f.inputCached.n + f.cacheCreation.n, Output: f.output.n,
			CachedInput: f.inputCached.n + f.cacheRead.n}
	}
	return broker.Usage{}
}

// payload reads response.inbound_payload for its usage into u: an object
// (the answer), a string (a streamed answer's events), or anything else,
// which says none. Its syntax is checked as skip checks it; what it holds
// is never a type error of the transaction.
func (s *scanner) payload(depth int, u *broker.Usage) error {
	var f usageFields
	switch s.data[s.i] {
	case '{':
		err := s.object(func(key []byte, escaped bool) error {
			if pick(key, escaped, payloadKeys) == 0 {
				f = usageFields{} // the last "usage" wins whole, as for a json.RawMessage
				return s.usage(depth+1, &f)
			}
			return s.skip(depth + 1)
		})
		if err != nil {
			return err
		}
	case '"':
		raw, plain, err := s.string()
		if err != nil {
			return err
		}
		if !plain {
			raw = unquote(raw)
		}
		streamUsage(raw, &f)
	default:
		if err := s.skip(depth); err != nil {
			return err
		}
	}
	*u = f.usage()
	return nil
}

// usage reads a usage object into f: null says nothing, and any value
// but an object cannot be one.
func (s *scanner) usage(depth int, f *usageFields) error {
	switch s.data[s.i] {
	case 'n':
		return s.literal("null")
	case '{':
		return s.object(func(key []byte, escaped bool) error {
			switch pick(key, escaped, usageKeys) {
			case 0:
				return s.count(depth+1, &f.prompt)
			case 1:
				return s.count(depth+1, &f.completion)
			case 2:
				return s.details(depth+1, &f.promptCached)
			case 3:
				return s.count(depth+1, &f.input)
			case 4:
				return s.count(depth+1, &f.output)
			case 5:
				return s.details(depth+1, &f.inputCached)
			case 6:
				return s.count(depth+1, &f.cacheRead)
			case 7:
				return s.count(depth+1, &f.cacheCreation)
			}
			return s.skip(depth + 1)
		})
	}
	f.bad = true
	return s.skip(depth)
}

// details reads a usage's *_tokens_details object for its cached_tokens
// into c, which the last such object given says alone.
func (s *scanner) details(depth int, c *tokenCount) error {
	*c = tokenCount{}
	switch s.data[s.i] {
	case 'n':
		return s.literal("null")
	case '{':
		return s.object(func(key []byte, escaped bool) error {
			if pick(key, escaped, detailsKeys) == 0 {
				return s.count(depth+1, c)
			}
			return s.skip(depth + 1)
		})
	}
	c.state = countBad
	return s.skip(depth)
}

// count reads a count of tokens into c: a whole number from 0 to
// broker.MaxTokens; null is absent, and anything else is bad.
func (s *scanner) count(depth int, c *tokenCount) error {
	switch ch := s.data[s.i]; {
	case ch == 'n':
		*c = tokenCount{}
		return s.literal("null")
	case ch == '-' || '0' <= ch && ch <= '9':
		n, whole, err := s.number()
		if err != nil {
			return err
		}
		if !whole || n < 0 || n > broker.MaxTokens {
			*c = tokenCount{state: countBad}
			return nil
		}
		*c = tokenCount{n: int64(n), state: countSet}
		return nil
	}
	*c = tokenCount{state: countBad}
	return s.skip(depth)
}

// streamUsage reads the usage of a streamed answer's events into f: each
// "data:" line holding a JSON object is an event, its usage in "usage"
// (OpenAI, Anthropic's message_delta) or "message.usage" (Anthropic's
// message_start), and a field takes the last value an event says. A line
// that is not such an event is no part of the usage.
func streamUsage(text []byte, f *usageFields) {
	for len(text) > 0 {
		var line []byte
		line, text = cutLine(text)
		data, ok := cutPrefix(line, "data:")
		if !ok {
			continue
		}
		var top, msg usageFields
		s := scanner{data: data}
		s.space()
		if s.i == len(s.data) || s.data[s.i] != '{' {
			continue
		}
		err := s.object(func(key []byte, escaped bool) error {
			switch pick(key, escaped, eventKeys) {
			case 0:
				top = usageFields{}
				return s.usage(1, &top)
			case 1:
				msg = usageFields{}
				if s.data[s.i] != '{' {
					return s.skip(1)
				}
				return s.object(func(key []byte, escaped bool) error {
					if pick(key, escaped, payloadKeys) == 0 {
						msg = usageFields{}
						return s.usage(2, &msg)
					}
					return s.skip(2)
				})
			}
			return s.skip(1)
		})
		if err != nil || s.end() != nil {
			continue // not JSON: no event the broker reads
		}
		f.merge(&msg)
		f.merge(&top)
	}
}

// cutLine cuts text at its first line end: "\n", "\r\n" or "\r", as
// server-sent events end lines.
func cutLine(text []byte) (line, rest []byte) {
	for i, c := range text {
		switch c {
		case '\n':
			return text[:i], text[i+1:]
		case '\r':
			if i+1 < len(text) && text[i+1] == '\n' {
				return text[:i], text[i+2:]
			}
			return text[:i], text[i+1:]
		}
	}
	return text, nil
}

func cutPrefix(b []byte, prefix string) ([]byte, bool) {
	if len(b) < len(prefix) || string(b[:len(prefix)]) != prefix {
		return nil, false
	}
	return b[len(prefix):], true
}
