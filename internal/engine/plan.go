package engine

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// Stage is one part of a plan that the caller applies as one pipeline step.
// The stages run in this order; the agent runs its database migration
// between StageBacking and StageContainers, so no Redash container of a new
// version starts before the schema is at its head, and a failed pull or
// migration leaves every Redash container untouched.
type Stage int

const (
	// StageImages pulls the images that are missing. It touches no container.
	StageImages Stage = iota + 1
	// StageBacking starts the bundled services the Redash services depend
	// on (provider local's postgres and redis), after the network and the
	// removal of stale containers (which may hold their names or ports):
	// the migration needs the database running. Empty without them.
	StageBacking
	// StageContainers creates the network (unless StageBacking did) and
	// stops, removes, creates, starts and restarts containers, in
	// dependency order.
	StageContainers
	// StageReady waits until each service is up, each as soon as its own
	// start (in StageContainers) has finished. It changes nothing; Up
	// applies it together with StageContainers, so a worker's check runs
	// while nginx still starts.
	StageReady
)

func (s Stage) String() string {
	switch s {
	case StageImages:
		return "images"
	case StageBacking:
		return "backing services"
	case StageContainers:
		return "containers"
	case StageReady:
		return "ready"
	}
	return fmt.Sprintf("Stage(%d)", int(s))
}

// ActionKind is what Apply does for one line of a plan: one Docker call or
// one wait, never a choice.
type ActionKind string

const (
	// ActPull pulls a missing image (never builds).
	ActPull ActionKind = "pull"
	// ActCreateNetwork creates the project's default network.
	ActCreateNetwork ActionKind = "create network"
	// ActStop stops a container that is removed next: SIGTERM, then SIGKILL
	// after the service's stop grace.
	ActStop ActionKind = "stop"
	// ActRemove removes a stopped container: an orphan (its service left the
	// project), a stale name (docker-compose v1 `p_server_1`, one-off `run`
	// containers), a duplicate replica, or the old container of a recreate.
	ActRemove ActionKind = "remove"
	// ActCreate creates a service's container under its final name; with
	// Replaces set it is the new container of a recreate.
	ActCreate ActionKind = "create"
	// ActStart starts a service's container: one the plan creates, or a
	// current one that is not running (created by a run that was killed
	// before starting it, or stopped by Down).
	ActStart ActionKind = "start"
	// ActRestart restarts a running, current container because a service it
	// depends on was (re)started: nginx resolves `redash` once, at start.
	ActRestart ActionKind = "restart"
	// ActKeep leaves a running, current container alone: no Docker call. It
	// is in the plan so the plan names every service.
	ActKeep ActionKind = "keep"
	// ActWaitReady waits until one service is up: the server and nginx
	// answer /ping, the others run and pass their readiness check (see
	// waitFor in ready.go).
	ActWaitReady ActionKind = "wait ready"
)

// Action is one step of a plan.
type Action struct {
	Stage     Stage
	Kind      ActionKind
	Service   string // empty for the network, images and stale containers
	Container string // the container's final name (the stale one, for stop and remove)
	ID        string // the existing container, for stop, remove, start and restart
	Image     string
	// ImageID is the image's ID under its tag when the plan was made, written
	// as LabelImage; "" when the image is pulled by the same plan.
	ImageID string
	Hash    string // desired config hash (old hash in OldHash)
	OldHash string
	// Replaces is the container a create replaces (a recreate).
	Replaces string
	// NetworkID is the observed project network a create attaches to; ""
	// when the plan creates the network, whose ID Apply takes from there.
	NetworkID string
	Reason    string
	// After lists the actions (indexes into Plan.Actions, all earlier) that
	// must have finished before this one starts.
	After []int
}

// resource is what an action changes, for counting changes: the service
// for its container's actions (the old container of a recreate included),
// else the stale container, the network or the image.
func (a Action) resource() string {
	switch a.Kind {
	case ActPull:
		return "image " + a.Image
	case ActCreateNetwork:
		return "network " + a.Container
	case ActStop, ActRemove:
		if a.Reason != reasonRecreate(a.Service) {
			return "container " + a.Container
		}
	}
	return "service " + a.Service
}

// Plan is everything one converge does, and the order: Actions are listed
// in an order that respects every After, so printing them top to bottom is
// an order Apply may run them in; Apply runs an action as soon as those it
// comes after have finished, so independent actions run in parallel.
type Plan struct {
	Project string
	Actions []Action
}

// Mutations counts the services, containers, networks and images the plan
// changes; 0 means Apply makes no mutating Docker call.
func (p Plan) Mutations() int {
	seen := map[string]bool{}
	for _, a := range p.Actions {
		if a.Kind != ActKeep && a.Kind != ActWaitReady {
			seen[a.resource()] = true
		}
	}
	return len(seen)
}

// String prints one numbered action per line, in plan order, with what each
// comes after; no secret: only names, images and (short) hashes.
func (p Plan) String() string {
	var b strings.Builder
	for i, a := range p.Actions {
		fmt.Fprintf(&b, "%2d %s", i+1, a.Text())
		if len(a.After) > 0 {
			nums := make([]string, len(a.After))
			for j, n := range a.After {
				nums[j] = fmt.Sprint(n + 1)
			}
			fmt.Fprintf(&b, " after %s", strings.Join(nums, ","))
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Text is the action as one line, without its number or order; Apply logs
// the same text when it carries the action out.
func (a Action) Text() string {
	switch a.Kind {
	case ActPull:
		return "pull " + a.Image
	case ActCreateNetwork:
		return "create network " + a.Container
	case ActStop, ActRemove:
		return fmt.Sprintf("%s %s (%s)", a.Kind, a.Container, a.Reason)
	case ActCreate:
		if a.Replaces != "" {
			s := fmt.Sprintf("recreate %s (image %s, hash %s -> %s", a.Service, a.Image, shortHash(a.OldHash), shortHash(a.Hash))
			if a.Reason != "" {
				s += ", " + a.Reason
			}
			return s + ")"
		}
		return fmt.Sprintf("create %s (image %s, hash %s)", a.Service, a.Image, shortHash(a.Hash))
	case ActStart:
		if a.Reason != "" {
			return fmt.Sprintf("start %s (hash %s, %s)", a.Service, shortHash(a.Hash), a.Reason)
		}
		return "start " + a.Service
	case ActRestart:
		return fmt.Sprintf("restart %s (%s)", a.Service, a.Reason)
	case ActKeep:
		return fmt.Sprintf("keep %s (hash %s)", a.Service, shortHash(a.Hash))
	case ActWaitReady:
		if a.Service == compose.ServerService || a.Service == compose.NginxService {
			return "wait ready: " + a.Service + " /ping"
		}
		return "wait ready: " + a.Service
	}
	return string(a.Kind)
}

func reasonRecreate(service string) string { return "recreate " + service }

// backing are the bundled services the Redash services depend on, which
// the migration needs running (provider local).
var backing = map[string]bool{compose.PostgresService: true, compose.RedisService: true}

// Has reports whether the plan has an action of stage st that makes a
// Docker call or waits (keep makes none).
func (p Plan) Has(st Stage) bool {
	for _, a := range p.Actions {
		if a.Stage == st && a.Kind != ActKeep {
			return true
		}
	}
	return false
}

// serviceOrder is the server first, then the other services by name, each
// placed after the services it depends_on: a dependency order in which
// every start can come after the starts it waits for.
func serviceOrder(p *types.Project) []string {
	names := slices.Sorted(maps.Keys(p.Services))
	if i := slices.Index(names, compose.ServerService); i > 0 {
		names = append([]string{compose.ServerService}, slices.Delete(names, i, i+1)...)
	}
	var out []string
	state := map[string]int{} // 1 visiting, 2 placed
	var visit func(string)
	visit = func(n string) {
		if _, ok := p.Services[n]; !ok || state[n] != 0 {
			// Unknown, placed, or a cycle (validate rejects cycles).
			return
		}
		state[n] = 1
		for _, dep := range slices.Sorted(maps.Keys(p.Services[n].DependsOn)) {
			visit(dep)
		}
		state[n] = 2
		out = append(out, n)
	}
	for _, n := range names {
		visit(n)
	}
	return out
}

// ComputePlan compares the desired project with what Docker holds and
// decides everything: what to pull, remove, create, start and restart, in
// which order, and what to wait for. It is pure: the same inputs give the
// same plan, printable before anything runs.
//
// The order is the real dependencies, as the compose file's depends_on
// says them: a service starts after the services it depends on started in
// the same plan (nginx after the server: it resolves `redash` at start),
// and a running dependent is restarted when one of those is replaced or
// started again. The Redash services depend on nothing but provider
// local's postgres and redis, which start in StageBacking; the migration
// before the Redash services is the agent's step between StageBacking and
// StageContainers. Starts also wait for the removal of stale containers,
// which may hold a published port.
func ComputePlan(d Desired, o Observed) Plan {
	project := d.Project.Name
	p := Plan{Project: project}
	add := func(a Action) int {
		p.Actions = append(p.Actions, a)
		return len(p.Actions) - 1
	}
	order := serviceOrder(d.Project)
	// With bundled services, the network and the stale containers' removal
	// come before them, in their stage; every other service's actions are
	// StageContainers.
	early := StageContainers
	for _, name := range order {
		if backing[name] {
			early = StageBacking
		}
	}
	stageOf := func(service string) Stage {
		if backing[service] {
			return StageBacking
		}
		return StageContainers
	}

	// Images: every missing one, before anything is stopped.
	pulled := map[string]bool{}
	for _, name := range order {
		ref := d.Project.Services[name].Image
		if _, ok := o.Images[ref]; ok || pulled[ref] {
			continue
		}
		pulled[ref] = true
		add(Action{Stage: StageImages, Kind: ActPull, Image: ref})
	}

	var netAfter []int
	netID := ""
	if o.Network == nil {
		netAfter = []int{add(Action{Stage: early, Kind: ActCreateNetwork, Container: compose.NetworkName(project)})}
	} else {
		netID = o.Network.ID
	}

	// Each service has one rightful container: its canonical name, number 1,
	// not one-off. Everything else with our project label goes.
	holders := map[string]Container{}
	var stale []Container
	reasons := map[string]string{}
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
			stale = append(stale, c)
			reasons[c.ID] = reason
			continue
		}
		holders[c.Service] = c
	}
	// Sorted here, not by Observe, so the plan does not depend on the
	// order Docker listed the containers in.
	slices.SortFunc(stale, func(a, b Container) int { return strings.Compare(a.Name, b.Name) })
	var staleGone []int
	for _, c := range stale {
		stop := add(Action{Stage: early, Kind: ActStop, Service: c.Service, Container: c.Name, ID: c.ID, Reason: reasons[c.ID]})
		staleGone = append(staleGone, add(Action{Stage: early, Kind: ActRemove, Service: c.Service, Container: c.Name, ID: c.ID, Reason: reasons[c.ID], After: []int{stop}}))
	}

	started := map[string]int{} // service -> its start action, when the plan starts it
	for _, name := range order {
		svc := d.Project.Services[name]
		svc.Name = name
		stage := stageOf(name)
		a := Action{
			Stage:     stage,
			Service:   name,
			Container: containerName(project, name),
			Image:     svc.Image,
			ImageID:   o.Images[svc.Image],
			Hash:      ConfigHash(svc, d.Env, d.HashKey),
			NetworkID: netID,
		}
		c, ok := holders[name]
		kind, reason := decide(a, c, ok, o, pulled[svc.Image])

		// A start waits for the services it depends on that this plan
		// starts, and for stale containers that may hold its ports.
		var startAfter []int
		for _, dep := range slices.Sorted(maps.Keys(svc.DependsOn)) {
			if i, ok := started[dep]; ok {
				startAfter = append(startAfter, i)
			}
		}
		startAfter = append(startAfter, staleGone...)

		switch kind {
		case ActKeep:
			a.Kind, a.ID = ActKeep, c.ID
			if causes, after := restartCauses(svc, started); len(causes) > 0 && c.State == "running" {
				// A dependency (nginx's server) is started anew: its
				// address may have changed, and the dependent resolved it
				// once, at its own start.
				a.Kind, a.Reason, a.After = ActRestart, strings.Join(causes, ", "), after
				started[name] = add(a)
				continue
			}
			if cause := startedBefore(c, holders); cause != "" && c.State == "running" {
				a.Kind, a.Reason = ActRestart, cause
				started[name] = add(a)
				continue
			}
			add(a)
		case ActStart:
			a.Kind, a.ID, a.Reason, a.After = ActStart, c.ID, reason, startAfter
			started[name] = add(a)
		case ActCreate:
			createAfter := slices.Clone(netAfter)
			if ok {
				// Stop and remove first, then create under the final name: a
				// kill in between leaves a missing container, which the next
				// run creates.
				why := reasonRecreate(name)
				stop := add(Action{Stage: stage, Kind: ActStop, Service: name, Container: c.Name, ID: c.ID, Reason: why})
				createAfter = append(createAfter, add(Action{Stage: stage, Kind: ActRemove, Service: name, Container: c.Name, ID: c.ID, Reason: why, After: []int{stop}}))
				a.Replaces, a.OldHash, a.Reason = c.Name, c.Hash, reason
			}
			a.Kind, a.After = ActCreate, createAfter
			created := add(a)
			started[name] = add(Action{Stage: stage, Kind: ActStart, Service: name, Container: a.Container,
				Hash: a.Hash, After: append([]int{created}, startAfter...)})
		}
	}

	// Each service is waited on once its own start is done (a kept one at
	// once), so its check overlaps the starts that come after it.
	for _, name := range order {
		a := Action{Stage: StageReady, Kind: ActWaitReady, Service: name}
		if i, ok := started[name]; ok {
			a.After = []int{i}
		}
		add(a)
	}
	return p
}

// decide is what one service's container needs: keep, start or create
// (a recreate when the container exists), and why.
func decide(a Action, c Container, exists bool, o Observed, pulled bool) (ActionKind, string) {
	switch {
	case !exists:
		return ActCreate, ""
	case c.Hash != a.Hash:
		return ActCreate, "config changed"
	case pulled:
		// The tag was missing: whatever the pull brings is what must run.
		return ActCreate, "image pulled"
	case a.ImageID != "" && c.ImageID != "" && c.ImageID != a.ImageID:
		// The tag was re-pulled or rebuilt since the container was made.
		return ActCreate, "image changed"
	case o.Network == nil:
		// A stopped container whose network was pruned cannot start.
		return ActCreate, "network missing"
	case c.NetworkID != "" && c.NetworkID != o.Network.ID:
		// Attached to a network that is not (or no longer) the project's.
		return ActCreate, "network changed"
	case c.State == "running" || c.State == "restarting":
		// restarting is Docker's on-failure policy at work; the readiness
		// wait reports it when it keeps failing.
		return ActKeep, ""
	case c.State == "created" || c.State == "exited":
		return ActStart, "was " + c.State
	}
	// paused, dead or removing: starting would not help.
	return ActCreate, "state " + c.State
}

// restartCauses names the dependencies the plan starts anew, and their
// start actions. Every depends_on counts as compose's `restart: true`: the
// compose file cannot say it (docker-compose 1.29's schema rejects the
// key), and the one dependency of the layouts whose address a dependent
// keeps is nginx's on the server (it resolves `redash` at start). For
// provider local's postgres and redis, restarting the Redash services after
// their database was replaced only clears stale connections.
func restartCauses(svc types.ServiceConfig, started map[string]int) (causes []string, after []int) {
	for _, dep := range slices.Sorted(maps.Keys(svc.DependsOn)) {
		if i, ok := started[dep]; ok {
			causes = append(causes, dep+" started anew"+keepsAddress(svc.Name, dep))
			after = append(after, i)
		}
	}
	return causes, after
}

// resolvesAtStart maps a service to the one whose address it resolves
// once, at its own start: redash/nginx resolves the upstream `redash` (the
// server's alias) and would proxy to an old container's address, answering
// 502 until restarted.
var resolvesAtStart = map[string]string{compose.NginxService: compose.ServerService}

// inResolvesAtStart: service is either side of a resolvesAtStart pair.
func inResolvesAtStart(service string) bool {
	for dependent, dep := range resolvesAtStart {
		if service == dependent || service == dep {
			return true
		}
	}
	return false
}

// keepsAddress says why a restart after dep matters for service, where it
// is more than stale connections (resolvesAtStart).
func keepsAddress(service, dep string) string {
	if resolvesAtStart[service] == dep {
		return ": " + service + " resolves " + compose.ServerAlias + " once, at its start, and would keep the old address"
	}
	return ""
}

// startedBefore is the cause to restart c, a running container kept as it
// is, when the container it resolves at start (also kept) started after
// it: a converge killed between the server's new start and nginx's restart,
// or Docker restarting a crashed server, which may hand it another address.
func startedBefore(c Container, holders map[string]Container) string {
	dep, ok := resolvesAtStart[c.Service]
	if !ok || c.StartedAt.IsZero() {
		return ""
	}
	d, ok := holders[dep]
	if !ok || d.State != "running" || !d.StartedAt.After(c.StartedAt) {
		return ""
	}
	return dep + " started after it" + keepsAddress(c.Service, dep)
}
