package engine

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
)

// ActionKind is what Apply does for one line of a plan.
type ActionKind string

const (
	// ActCreateNetwork creates the project's default network.
	ActCreateNetwork ActionKind = "create network"
	// ActRemove stops and removes a container that does not belong: an
	// orphan (its service left the project), a stale name (docker-compose v1
	// `p_server_1`, one-off `run` containers) or a duplicate replica.
	ActRemove ActionKind = "remove"
	// ActCreate creates and starts a service's missing container.
	ActCreate ActionKind = "create"
	// ActStart starts a current container that is not running (created by a
	// run that was killed before starting it, or stopped by Down).
	ActStart ActionKind = "start"
	// ActRecreate stops and removes the old container, then creates and
	// starts the new one under the same final name.
	ActRecreate ActionKind = "recreate"
	// ActKeep leaves a running, current container alone: no Docker call.
	ActKeep ActionKind = "keep"
)

// Action is one step of a plan.
type Action struct {
	Kind      ActionKind
	Service   string // empty for the network
	Container string // the container's final name (or the stale one, for remove)
	ID        string // the existing container, for start, recreate and remove
	Image     string
	Hash      string // desired config hash (old hash in OldHash)
	OldHash   string
	Reason    string
}

// Plan is the ordered list of what Apply does. Its order is the execution
// order: network, removals, the server, then the other services (which
// Apply runs in parallel once the server answers /ping).
type Plan struct {
	Project string
	Actions []Action
}

// Mutations counts the actions that change something; 0 means Apply makes
// no mutating Docker call.
func (p Plan) Mutations() int {
	n := 0
	for _, a := range p.Actions {
		if a.Kind != ActKeep {
			n++
		}
	}
	return n
}

// String prints one action per line, in execution order, with no secret:
// only names, images and (short) hashes.
func (p Plan) String() string {
	var b strings.Builder
	for _, a := range p.Actions {
		switch a.Kind {
		case ActCreateNetwork:
			fmt.Fprintf(&b, "create network %s", a.Container)
		case ActRemove:
			fmt.Fprintf(&b, "remove %s (%s)", a.Container, a.Reason)
		case ActCreate:
			fmt.Fprintf(&b, "create %s (image %s, hash %s)", a.Service, a.Image, shortHash(a.Hash))
		case ActRecreate:
			fmt.Fprintf(&b, "recreate %s (image %s, hash %s -> %s", a.Service, a.Image, shortHash(a.OldHash), shortHash(a.Hash))
			if a.Reason != "" {
				fmt.Fprintf(&b, ", %s", a.Reason)
			}
			b.WriteString(")")
		case ActStart:
			fmt.Fprintf(&b, "start %s (hash %s, %s)", a.Service, shortHash(a.Hash), a.Reason)
		case ActKeep:
			fmt.Fprintf(&b, "keep %s (hash %s)", a.Service, shortHash(a.Hash))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// serviceOrder is the server first, then the other services by name.
func serviceOrder(p *types.Project) []string {
	names := slices.Sorted(maps.Keys(p.Services))
	if i := slices.Index(names, ServerService); i > 0 {
		names = append([]string{ServerService}, slices.Delete(names, i, i+1)...)
	}
	return names
}

// ComputePlan compares the desired project with what Docker holds. It is
// pure: the same inputs give the same plan, printable before anything runs.
func ComputePlan(d Desired, o Observed) Plan {
	project := d.Project.Name
	p := Plan{Project: project}
	if o.Network == nil {
		p.Actions = append(p.Actions, Action{Kind: ActCreateNetwork, Container: networkName(project)})
	}

	// Each service has one rightful container: its canonical name, number 1,
	// not one-off. Everything else with our project label goes.
	holders := map[string]Container{}
	var removes []Action
	for _, c := range o.Containers {
		_, known := d.Project.Services[c.Service]
		want := containerName(project, c.Service)
		reason := ""
		switch {
		case c.Service == "":
			reason = "no service label"
		case !known:
			reason = fmt.Sprintf("orphan: service %s is no longer in the project", c.Service)
		case c.OneOff:
			reason = fmt.Sprintf("service %s: one-off container", c.Service)
		case c.Number != containerNumber:
			reason = fmt.Sprintf("service %s: duplicate number %q", c.Service, c.Number)
		case c.Name != want:
			reason = fmt.Sprintf("service %s: stale name, not %s", c.Service, want)
		}
		if reason != "" {
			removes = append(removes, Action{Kind: ActRemove, Service: c.Service, Container: c.Name, ID: c.ID, Reason: reason})
			continue
		}
		holders[c.Service] = c
	}
	// Sorted here, not by Observe, so the plan does not depend on the
	// order Docker listed the containers in.
	slices.SortFunc(removes, func(a, b Action) int { return strings.Compare(a.Container, b.Container) })
	p.Actions = append(p.Actions, removes...)

	for _, name := range serviceOrder(d.Project) {
		svc := d.Project.Services[name]
		svc.Name = name
		a := Action{
			Service:   name,
			Container: containerName(project, name),
			Image:     svc.Image,
			Hash:      ConfigHash(svc, d.Env, d.HashKey),
		}
		c, ok := holders[name]
		switch {
		case !ok:
			a.Kind = ActCreate
		case c.Hash != a.Hash:
			a.Kind, a.ID, a.OldHash, a.Reason = ActRecreate, c.ID, c.Hash, "config changed"
		case o.Network == nil:
			// A stopped container whose network was pruned cannot start.
			a.Kind, a.ID, a.OldHash, a.Reason = ActRecreate, c.ID, c.Hash, "network missing"
		case c.NetworkID != "" && c.NetworkID != o.Network.ID:
			// Attached to a network that is not (or no longer) the project's.
			a.Kind, a.ID, a.OldHash, a.Reason = ActRecreate, c.ID, c.Hash, "network changed"
		case c.State == "running" || c.State == "restarting":
			// restarting is Docker's on-failure policy at work; WaitReady
			// reports it when it keeps failing.
			a.Kind, a.ID = ActKeep, c.ID
		case c.State == "created" || c.State == "exited":
			a.Kind, a.ID, a.Reason = ActStart, c.ID, "was "+c.State
		default:
			// paused, dead or removing: starting would not help.
			a.Kind, a.ID, a.OldHash, a.Reason = ActRecreate, c.ID, c.Hash, "state "+c.State
		}
		p.Actions = append(p.Actions, a)
	}
	return p
}
