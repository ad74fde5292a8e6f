package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/matryer/is"

	"github.com/gecholog/broker/replica"
)

// TestReadmeConfigurationTableIsWhatHelpPrints holds the README's
// configuration table to what -h prints, for serve and every other
// command: each environment variable a command's -h names is a row of the
// table with the same flag and the same default, and each row of the
// table is a setting some command's -h names. A default changed in the
// package that owns it, or in the table, and not in the other, fails here.
func TestReadmeConfigurationTableIsWhatHelpPrints(t *testing.T) {
	const tmp = "/readme-tmpdir"
	table := readmeSettings(t, tmp)
	if len(table) < 30 {
		t.Fatalf("README: %d settings in the configuration table; is it the table of ## Configuration?", len(table))
	}
	named := map[string]bool{} // environment variables some -h names
	for name := range commands {
		help := helpSettings(t, name, env("TMPDIR", tmp))
		for envVar, h := range help {
			t.Run(name+"/"+envVar, func(t *testing.T) {
				is := is.New(t)
				named[envVar] = true
				r, ok := table[envVar]
				if !ok {
					t.Fatalf("broker %s -h names %s (-%s), which README's configuration table leaves out", name, envVar, h.flag)
				}
				is.Equal(r.flag, h.flag) // the README's flag for the variable is what -h names
				if !sameDefault(r.def, h.def) {
					t.Errorf("%s: README's default %q, broker %s -h's %q", envVar, r.def, name, h.def)
				}
			})
		}
	}
	for envVar, r := range table {
		if !named[envVar] {
			t.Errorf("README's configuration table has %s (-%s), which no command's -h names", envVar, r.flag)
		}
	}
}

// setting is a row of the README's configuration table, or a setting as
// -h prints it: its flag without the dash, and its default ("" for none).
type setting struct{ flag, def string }

var codeSpan = regexp.MustCompile("`([^`]*)`")

// readmeSettings reads the configuration table(s) of README.md's
// "## Configuration": the tables with flag, environment and default
// columns, by environment variable. A row may name several flags and as
// many variables, in the same order, with one default. The default is
// the cell's code span, as `0` (off), or none; the README's placeholders
// $TMPDIR and hostname:pid are expanded to what this process has, with
// tmp for $TMPDIR.
func readmeSettings(t *testing.T, tmp string) map[string]setting {
	t.Helper()
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Configuration\n")
	if !ok {
		t.Fatal("README: no ## Configuration section")
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	settings := map[string]setting{}
	col := map[string]int(nil) // the current table's columns by header, nil outside a settings table
	for line := range strings.Lines(section) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			col = nil
			continue
		}
		cells := tableCells(line)
		switch {
		case col == nil && slices.Contains(cells, "environment"):
			col = map[string]int{}
			for i, c := range cells {
				col[c] = i
			}
			for _, c := range []string{"flag", "environment", "default"} {
				if _, ok := col[c]; !ok {
					t.Fatalf("README: the configuration table has no %s column: %s", c, line)
				}
			}
			continue
		case col == nil, strings.HasPrefix(line, "| ---"):
			continue
		}
		if len(cells) <= max(col["flag"], col["environment"], col["default"]) {
			t.Fatalf("README: a configuration row with too few cells: %s", line)
		}
		flags := codeSpans(cells[col["flag"]])
		envs := codeSpans(cells[col["environment"]])
		defs := codeSpans(cells[col["default"]])
		if len(flags) == 0 || len(flags) != len(envs) || len(defs) > 1 {
			t.Fatalf("README: a configuration row needs as many flags as variables and at most one default: %s", line)
		}
		def := strings.Join(defs, "")
		def = strings.ReplaceAll(def, "$TMPDIR", tmp)
		if def == "hostname:pid" {
			def = replica.DefaultID()
		}
		for i, e := range envs {
			if _, dup := settings[e]; dup {
				t.Fatalf("README: %s is in the configuration table twice", e)
			}
			settings[e] = setting{flag: strings.TrimPrefix(flags[i], "-"), def: def}
		}
	}
	return settings
}

// tableCells splits a Markdown table row into its trimmed cells.
func tableCells(line string) []string {
	cells := strings.Split(strings.Trim(line, "|"), "|")
	for i := range cells {
		cells[i] = strings.TrimSpace(cells[i])
	}
	return cells
}

func codeSpans(cell string) []string {
	var spans []string
	for _, m := range codeSpan.FindAllStringSubmatch(cell, -1) {
		spans = append(spans, m[1])
	}
	return spans
}

// helpUsage is the end of a setting's usage line as the flag package
// prints it: our "(env NAME)", then its own "(default X)" unless the
// default is the type's zero value.
var helpUsage = regexp.MustCompile(`\(env ([A-Z0-9_]+)\)(?: \(default (.*)\))?$`)

// helpSettings runs "broker name -h" and returns the settings it prints
// that have an environment variable, by variable.
func helpSettings(t *testing.T, name string, getenv func(string) string) map[string]setting {
	t.Helper()
	var out bytes.Buffer
	if err := run(context.Background(), []string{name, "-h"}, getenv, &out, io.Discard); err != nil {
		t.Fatalf("broker %s -h: %v", name, err)
	}
	settings := map[string]setting{}
	flag := ""
	for line := range strings.Lines(out.String()) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, "  -"):
			flag = strings.Fields(strings.TrimPrefix(line, "  -"))[0]
		case strings.HasPrefix(line, "    \t") && flag != "":
			if m := helpUsage.FindStringSubmatch(line); m != nil {
				settings[m[1]] = setting{flag: flag, def: m[2]}
			}
		}
	}
	if len(settings) == 0 && strings.Contains(out.String(), "(env ") {
		t.Fatalf("broker %s -h: no setting read from\n%s", name, out.String())
	}
	return settings
}

// sameDefault reports whether the README's default readme is -h's help:
// equal, or equal durations (60s and 1m0s), or, where -h shows none
// (the flag package leaves out a zero default), the zero value.
func sameDefault(readme, help string) bool {
	if help == "" {
		return readme == "" || readme == "0" || readme == "false"
	}
	if readme == help {
		return true
	}
	r, err1 := time.ParseDuration(readme)
	h, err2 := time.ParseDuration(help)
	return err1 == nil && err2 == nil && r == h
}
