package main

// `render --plan` against the `up` that follows it: the plan printed is
// exactly what up carries out, and up carries each action out only after
// the ones the plan puts it after.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// planLine is one action of a printed plan.
type planLine struct {
	n     int
	text  string
	after []int
}

var planLineRE = regexp.MustCompile(`^\s*(\d+) (.*?)(?: after ([\d,]+))?$`)

// parsePlan reads the action lines that follow "# plan:" in render --plan.
func parsePlan(t *testing.T, out string) []planLine {
	t.Helper()
	_, body, ok := strings.Cut(out, "# plan: ")
	if !ok {
		t.Fatalf("render --plan printed no plan:\n%s", out)
	}
	var lines []planLine
	for _, l := range strings.Split(strings.TrimSpace(body), "\n")[1:] {
		m := planLineRE.FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("plan line %q is not `N action [after N,...]`", l)
		}
		n, _ := strconv.Atoi(m[1])
		pl := planLine{n: n, text: m[2]}
		if m[3] != "" {
			for _, a := range strings.Split(m[3], ",") {
				x, _ := strconv.Atoi(a)
				pl.after = append(pl.after, x)
			}
		}
		lines = append(lines, pl)
	}
	return lines
}

// performed lists, in the order they finished, the actions up's JSON log
// says it carried out ("[finished] <kind>" with the action's n and text).
func performed(t *testing.T, stderr string) []planLine {
	t.Helper()
	var out []planLine
	sc := bufio.NewScanner(strings.NewReader(stderr))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var rec struct {
			Msg    string `json:"msg"`
			N      int    `json:"n"`
			Action string `json:"action"`
		}
		if json.Unmarshal(sc.Bytes(), &rec) != nil || rec.Action == "" || !strings.HasPrefix(rec.Msg, "[finished] ") {
			continue
		}
		out = append(out, planLine{n: rec.N, text: rec.Action})
	}
	return out
}

func TestRenderPlanIsWhatUpDoes(t *testing.T) {
	s := newStack(t)
	check := func(t *testing.T) {
		planOut, stderr, code := s.run("render", "--plan")
		if code != 0 {
			t.Fatalf("render --plan exited %d: %s", code, stderr)
		}
		plan := parsePlan(t, planOut)
		_, upErr, code := s.run("--log-format", "json", "up")
		if code != 0 {
			t.Fatalf("up exited %d: %s", code, upErr)
		}
		done := performed(t, upErr)

		var want, got []string
		for _, p := range plan {
			if !strings.HasPrefix(p.text, "keep ") { // keep makes no call
				want = append(want, fmt.Sprintf("%d %s", p.n, p.text))
			}
		}
		finishedAt := map[int]int{}
		for i, d := range done {
			got = append(got, fmt.Sprintf("%d %s", d.n, d.text))
			finishedAt[d.n] = i
		}
		slices.Sort(want)
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("up carried out:\n%s\nrender --plan printed:\n%s", strings.Join(got, "\n"), planOut)
		}
		for _, p := range plan {
			i, ok := finishedAt[p.n]
			if !ok {
				continue
			}
			for _, a := range p.after {
				if j, ok := finishedAt[a]; ok && j > i {
					t.Errorf("up finished action %d (%s) before action %d, which the plan puts first", p.n, p.text, a)
				}
			}
		}
		t.Logf("render --plan, then up:\n%s", planOut[strings.Index(planOut, "# plan: "):])
	}
	// From nothing: the network and every container.
	t.Run("cold", check)
	// A rotated secret: recreates of the Redash services, nginx restarted
	// after the new server.
	s.moto.Put(t, "Redash/CookieSecret", "plan-equals-up-cookie")
	t.Run("rotation", check)
}
