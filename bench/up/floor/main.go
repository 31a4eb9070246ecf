// Command floor is the lower bound of bench/up: the fewest Docker Engine API
// calls that converge a compose file, with nothing else (no health wait, no
// rendering, no secrets, no migrations). It loads the file with compose-go,
// lists the project's containers, creates the project network if missing and
// creates+starts every service container (with its ports and named volumes)
// in parallel; a container whose
// config-hash label matches is left alone, so a second run is a no-op.
//
// With -depends, a start also waits for the starts of the services its
// depends_on names (nginx after the server, whose name it resolves when it
// starts; with bundled postgres and redis, the Redash services after
// them): the same parallel work in the least order a correct converger
// keeps. Everything else stays parallel.
//
// Side effects: creates/removes containers and a network on the Docker
// Engine named by DOCKER_HOST. Usage:
//
//	floor [-depends] -p PROJECT -f FILE
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/client"
	"github.com/docker/go-connections/nat"
)

const (
	labelProject = "com.docker.compose.project"
	labelService = "com.docker.compose.service"
	labelNumber  = "com.docker.compose.container-number"
	labelOneOff  = "com.docker.compose.oneoff"
	labelHash    = "com.docker.compose.config-hash"
	labelNetwork = "com.docker.compose.network"
)

func main() {
	project := flag.String("p", "floor", "compose project name")
	file := flag.String("f", "docker-compose.yml", "compose file")
	depends := flag.Bool("depends", false, "start a service after the starts of the services it depends_on")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := up(ctx, *project, *file, *depends); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func up(ctx context.Context, name, file string, depends bool) error {
	opts, err := cli.NewProjectOptions([]string{file}, cli.WithName(name), cli.WithOsEnv)
	if err != nil {
		return fmt.Errorf("reading %q: %w", file, err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return fmt.Errorf("loading %q: %w", file, err)
	}
	docker, err := client.NewClientWithOpts(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return fmt.Errorf("connecting to docker: %w", err)
	}
	defer docker.Close()

	existing, err := docker.ContainerList(ctx, container.ListOptions{All: true,
		Filters: filters.NewArgs(filters.Arg("label", labelProject+"="+name))})
	if err != nil {
		return fmt.Errorf("listing containers of %q: %w", name, err)
	}
	byService := map[string]container.Summary{}
	for _, c := range existing {
		byService[c.Labels[labelService]] = c
	}

	netName := name + "_default"
	if n, ok := p.Networks["default"]; ok && n.Name != "" {
		netName = n.Name
	}
	if _, err := docker.NetworkInspect(ctx, netName, network.InspectOptions{}); cerrdefs.IsNotFound(err) {
		_, err = docker.NetworkCreate(ctx, netName, network.CreateOptions{Labels: map[string]string{
			labelProject: name, labelNetwork: "default"}})
		if err != nil {
			return fmt.Errorf("creating network %q: %w", netName, err)
		}
	} else if err != nil {
		return fmt.Errorf("inspecting network %q: %w", netName, err)
	}

	names := make([]string, 0, len(p.Services))
	for s := range p.Services {
		names = append(names, s)
	}
	sort.Strings(names)
	// started[s] closes when s's start is done (or it needed none).
	started := map[string]chan struct{}{}
	for _, s := range names {
		started[s] = make(chan struct{})
	}
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, s := range names {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(started[s])
			var after []chan struct{}
			if depends {
				for dep := range p.Services[s].DependsOn {
					if ch, ok := started[dep]; ok {
						after = append(after, ch)
					}
				}
			}
			errs[i] = converge(ctx, docker, name, netName, p.Volumes, p.Services[s], byService[s], after)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// converge makes one service's container match svc: keep it when its hash
// matches and it runs, otherwise replace it; the start comes after every
// channel in after has closed.
func converge(ctx context.Context, docker *client.Client, project, netName string, volumes types.Volumes, svc types.ServiceConfig, have container.Summary, after []chan struct{}) error {
	raw, err := json.Marshal(svc)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(raw)
	hash := hex.EncodeToString(sum[:])
	if have.ID != "" {
		if have.Labels[labelHash] == hash && have.State == "running" {
			return nil
		}
		if err := docker.ContainerRemove(ctx, have.ID, container.RemoveOptions{Force: true}); err != nil {
			return fmt.Errorf("removing %q: %w", have.Names, err)
		}
	}
	var env []string
	for k, v := range svc.Environment {
		if v != nil {
			env = append(env, k+"="+*v)
		}
	}
	sort.Strings(env)
	aliases := []string{svc.Name}
	if n := svc.Networks["default"]; n != nil {
		aliases = append(aliases, n.Aliases...)
	}
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, pc := range svc.Ports {
		port := nat.Port(fmt.Sprintf("%d/%s", pc.Target, pc.Protocol))
		exposed[port] = struct{}{}
		bindings[port] = append(bindings[port], nat.PortBinding{HostIP: pc.HostIP, HostPort: pc.Published})
	}
	// A named volume mount makes the daemon create the volume if missing,
	// as compose does; its name comes from the top-level volumes section.
	var mounts []mount.Mount
	for _, v := range svc.Volumes {
		src := v.Source
		if tv, ok := volumes[src]; ok && tv.Name != "" {
			src = tv.Name
		}
		mounts = append(mounts, mount.Mount{Type: mount.Type(v.Type), Source: src, Target: v.Target, ReadOnly: v.ReadOnly})
	}
	cname := project + "-" + svc.Name + "-1"
	resp, err := docker.ContainerCreate(ctx,
		&container.Config{
			Image: svc.Image, Cmd: []string(svc.Command), Env: env, ExposedPorts: exposed,
			Labels: map[string]string{labelProject: project, labelService: svc.Name,
				labelNumber: "1", labelOneOff: "False", labelHash: hash},
		},
		&container.HostConfig{
			RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyMode(svc.Restart)},
			PortBindings:  bindings,
			Mounts:        mounts,
		},
		&network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
			netName: {Aliases: aliases}}},
		nil, cname)
	if err != nil {
		return fmt.Errorf("creating %q: %w", cname, err)
	}
	for _, ch := range after {
		<-ch
	}
	if err := docker.ContainerStart(ctx, resp.ID, container.StartOptions{}); err != nil {
		return fmt.Errorf("starting %q: %w", cname, err)
	}
	return nil
}
