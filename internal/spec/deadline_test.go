package spec

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// TestJobDeadlineFields checks the deadline fields: every bad value is
// named with its field and its fix.
func TestJobDeadlineFields(t *testing.T) {
	const head = `{"apiVersion":"spotml/v1","kind":"Job","metadata":{"name":"j"},"spec":{"count":1,"template":{"command":"x"%s},%s}}`
	tests := []struct {
		name, task, spec string
		want             string
	}{
		{"duration", "", `"deadline":"36h","work":"24h"`, ""},
		{"absolute", "", `"deadline":"2026-12-01T18:00:00Z","policy":"deadline"`, ""},
		{"fixed keeps priority", "", `"deadline":"36h","policy":"fixed","priority":"spot"`, ""},
		{"cap", "", `"onDemandAfterPreemptions":3,"priority":"spot"`, ""},
		{"bad deadline", "", `"deadline":"tomorrow"`,
			`spec.deadline: "tomorrow" is neither a positive duration like "36h" nor an RFC 3339 time like "2026-12-01T18:00:00Z"`},
		{"bare number", "", `"deadline":"36"`,
			`spec.deadline: "36" is neither a positive duration like "36h" nor an RFC 3339 time like "2026-12-01T18:00:00Z"`},
		{"work too long", "", `"deadline":"10h","work":"12h"`,
			`spec.work: 12h leaves no room before the deadline (10h); raise spec.deadline or lower spec.work`},
		{"work alone", "", `"work":"12h"`,
			`spec.work: only used with spec.deadline; add a deadline like deadline: 36h, or remove work`},
		{"bad policy", "", `"deadline":"36h","policy":"cheap"`,
			`spec.policy: "cheap" is not a policy; use "deadline" (spotml chooses spot or on-demand to meet spec.deadline) or "fixed" (pool and priority as written)`},
		{"policy alone", "", `"policy":"deadline"`,
			`spec.policy: needs spec.deadline; add one like deadline: 36h (or an RFC 3339 time), or remove policy`},
		{"negative cap", "", `"onDemandAfterPreemptions":-1`,
			`spec.onDemandAfterPreemptions: must be 0 (never) or more, got -1`},
		{"pinned", `,"priority":"spot"`, `"deadline":"36h","pool":"gpu"`,
			"spec.pool: not allowed with policy deadline, which chooses spot or on-demand itself; remove it (any pool of the chosen priority runs the tasks)\n" +
				"spec.template.priority: not allowed with policy deadline, which chooses spot or on-demand itself; remove it, or set policy: fixed"},
		{"cap pinned", `,"pool":"gpu"`, `"onDemandAfterPreemptions":2`,
			"spec.template.pool: not allowed with spec.onDemandAfterPreemptions, which moves tasks to on-demand itself; remove it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var j Job
			if err := json.Unmarshal(fmt.Appendf(nil, head, tt.task, tt.spec), &j); err != nil {
				t.Fatal(err)
			}
			j.Default()
			got := ""
			if err := j.Validate(); err != nil {
				got = err.Error()
			}
			if got != tt.want {
				t.Errorf("Validate:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestDeadlineAt(t *testing.T) {
	sub := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		deadline string
		want     time.Time
	}{
		{"36h", sub.Add(36 * time.Hour)},
		{"2026-12-01T18:00:00Z", time.Date(2026, 12, 1, 18, 0, 0, 0, time.UTC)},
	} {
		j := Job{Spec: JobSpec{Deadline: tt.deadline}}
		got, ok := j.DeadlineAt(sub)
		if !ok || !got.Equal(tt.want) {
			t.Errorf("DeadlineAt(%q) = %v, %v; want %v", tt.deadline, got, ok, tt.want)
		}
		if !j.DeadlinePolicy() {
			t.Errorf("%q: the deadline policy is the default", tt.deadline)
		}
	}
	if _, ok := (&Job{}).DeadlineAt(sub); ok {
		t.Error("a job without a deadline has one")
	}
}
