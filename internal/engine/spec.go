package engine

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/strslice"
	"github.com/docker/go-connections/nat"

	"github.com/redash-agent/redash-agent/internal/compose"
)

// spec is everything ContainerCreate needs for one service.
type spec struct {
	Config     *container.Config
	HostConfig *container.HostConfig
	Networking *network.NetworkingConfig
}

// validate rejects what the engine cannot run faithfully, naming every bad
// service and field at once, before anything is touched.
func validate(d Desired) error {
	if d.Project == nil {
		return errors.New("converging: no compose project given")
	}
	if d.Project.Name == "" {
		return errors.New("converging: the compose project has no name: set it (the agent uses \"redash\")")
	}
	if len(d.Project.Services) == 0 {
		return fmt.Errorf("converging project %q: it has no services: check redash:role and the layout", d.Project.Name)
	}
	var bad []string
	for _, name := range slices.Sorted(maps.Keys(d.Project.Services)) {
		svc := d.Project.Services[name]
		if svc.Image == "" {
			bad = append(bad, fmt.Sprintf("service %q has no image (the agent never builds)", name))
		}
		for n := range svc.Networks {
			if n != compose.DefaultNetwork {
				bad = append(bad, fmt.Sprintf("service %q uses network %q (only %q is supported)", name, n, compose.DefaultNetwork))
			}
		}
		if svc.NetworkMode != "" {
			bad = append(bad, fmt.Sprintf("service %q sets network_mode (not supported)", name))
		}
		if len(svc.Secrets) > 0 || len(svc.Configs) > 0 || len(svc.Devices) > 0 || len(svc.VolumesFrom) > 0 {
			bad = append(bad, fmt.Sprintf("service %q uses secrets, configs, devices or volumes_from (not supported)", name))
		}
		for _, p := range svc.Ports {
			if strings.Contains(p.Published, "-") {
				bad = append(bad, fmt.Sprintf("service %q publishes a port range %q (publish single ports)", name, p.Published))
			}
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("converging project %q: %s: fix the rendered compose project", d.Project.Name, strings.Join(bad, "; "))
	}
	return nil
}

// buildSpec turns a compose service into the container the engine creates.
// It is pure. Every input that reaches the result is covered by ConfigHash
// (a change here means bumping hashVersion).
//
// netID is the project network's ID: containers attach by ID because two
// networks of the same name can briefly exist (see ensureNetwork).
//
// imageID, when known, becomes LabelImage; it is not in the hash, which
// covers the reference, because the plan compares it on its own.
func buildSpec(d Desired, netID string, svc types.ServiceConfig, hash, imageID string) spec {
	exposed, bindings := ports(svc)
	cfg := containerConfig(svc, serviceEnv(svc, d.Env), exposed)
	cfg.Labels = labels(d.Project, svc, hash, imageID)
	host := hostConfig(d.Project, svc, bindings)
	host.NetworkMode = container.NetworkMode(netID)
	return spec{Config: cfg, HostConfig: host, Networking: networking(svc, netID)}
}

// labels are compose's, so `docker compose -p <project> ps` sees the stack,
// plus the config hash and image ID that decide a recreate.
func labels(p *types.Project, svc types.ServiceConfig, hash, imageID string) map[string]string {
	l := map[string]string{}
	maps.Copy(l, svc.Labels)
	l[LabelProject] = p.Name
	l[LabelService] = svc.Name
	l[LabelContainerNumber] = containerNumber
	l[LabelOneOff] = oneOffFalse
	l[LabelConfigHash] = hash
	l[LabelManagedBy] = managedBy
	if imageID != "" {
		l[LabelImage] = imageID
	}
	if p.WorkingDir != "" {
		l[LabelWorkingDir] = p.WorkingDir
	}
	if len(p.ComposeFiles) > 0 {
		l[LabelConfigFiles] = strings.Join(p.ComposeFiles, ",")
	}
	return l
}

// ports are the service's exposed ports and their host bindings.
func ports(svc types.ServiceConfig) (nat.PortSet, nat.PortMap) {
	exposed := nat.PortSet{}
	bindings := nat.PortMap{}
	for _, p := range svc.Ports {
		proto := p.Protocol
		if proto == "" {
			proto = "tcp"
		}
		port := nat.Port(fmt.Sprintf("%d/%s", p.Target, proto))
		exposed[port] = struct{}{}
		bindings[port] = append(bindings[port], nat.PortBinding{HostIP: p.HostIP, HostPort: p.Published})
	}
	for _, x := range svc.Expose {
		port := nat.Port(x)
		if !strings.Contains(x, "/") {
			port = nat.Port(x + "/tcp")
		}
		exposed[port] = struct{}{}
	}
	return exposed, bindings
}

// containerConfig is what runs inside the container: image, command,
// environment (sorted, so the spec is stable), stop and health settings.
func containerConfig(svc types.ServiceConfig, env map[string]string, exposed nat.PortSet) *container.Config {
	envList := make([]string, 0, len(env))
	for _, k := range slices.Sorted(maps.Keys(env)) {
		envList = append(envList, k+"="+env[k])
	}
	cfg := &container.Config{
		Image:        svc.Image,
		Env:          envList,
		ExposedPorts: exposed,
		User:         svc.User,
		WorkingDir:   svc.WorkingDir,
		Hostname:     svc.Hostname,
		StopSignal:   svc.StopSignal,
		Tty:          svc.Tty,
		OpenStdin:    svc.StdinOpen,
	}
	if len(svc.Command) > 0 {
		cfg.Cmd = strslice.StrSlice(svc.Command)
	}
	if len(svc.Entrypoint) > 0 {
		cfg.Entrypoint = strslice.StrSlice(svc.Entrypoint)
	}
	if svc.StopGracePeriod != nil {
		s := int(time.Duration(*svc.StopGracePeriod).Seconds())
		cfg.StopTimeout = &s
	}
	if hc := svc.HealthCheck; hc != nil {
		cfg.Healthcheck = &container.HealthConfig{Test: hc.Test}
		if hc.Disable {
			cfg.Healthcheck.Test = []string{"NONE"}
		}
		if hc.Interval != nil {
			cfg.Healthcheck.Interval = time.Duration(*hc.Interval)
		}
		if hc.Timeout != nil {
			cfg.Healthcheck.Timeout = time.Duration(*hc.Timeout)
		}
		if hc.StartPeriod != nil {
			cfg.Healthcheck.StartPeriod = time.Duration(*hc.StartPeriod)
		}
		if hc.Retries != nil {
			cfg.Healthcheck.Retries = int(*hc.Retries)
		}
	}
	return cfg
}

// hostConfig is how Docker runs the container: restart policy, privileges,
// resources, logging and mounts.
func hostConfig(p *types.Project, svc types.ServiceConfig, bindings nat.PortMap) *container.HostConfig {
	host := &container.HostConfig{
		PortBindings: bindings,
		// on-failure whatever the compose file says: Docker restarts a
		// crashed container, but never starts Redash at daemon start; only
		// the agent does, after rendering fresh config (docs/design.md).
		RestartPolicy:  container.RestartPolicy{Name: container.RestartPolicyOnFailure},
		Init:           svc.Init,
		CapAdd:         svc.CapAdd,
		CapDrop:        svc.CapDrop,
		Privileged:     svc.Privileged,
		ReadonlyRootfs: svc.ReadOnly,
		SecurityOpt:    svc.SecurityOpt,
		ExtraHosts:     svc.ExtraHosts.AsList(":"),
		DNS:            svc.DNS,
		ShmSize:        int64(svc.ShmSize),
	}
	host.Resources.Memory = int64(svc.MemLimit)
	if len(svc.Sysctls) > 0 {
		host.Sysctls = map[string]string(svc.Sysctls)
	}
	for _, name := range slices.Sorted(maps.Keys(svc.Ulimits)) {
		u := svc.Ulimits[name]
		soft, hard := int64(u.Soft), int64(u.Hard)
		if u.Single != 0 {
			soft, hard = int64(u.Single), int64(u.Single)
		}
		host.Ulimits = append(host.Ulimits, &container.Ulimit{Name: name, Soft: soft, Hard: hard})
	}
	if svc.Logging != nil && svc.Logging.Driver != "" {
		host.LogConfig = container.LogConfig{Type: svc.Logging.Driver, Config: map[string]string(svc.Logging.Options)}
	} else if svc.LogDriver != "" {
		host.LogConfig = container.LogConfig{Type: svc.LogDriver, Config: svc.LogOpt}
	}
	for _, v := range svc.Volumes {
		if v.Type == types.VolumeTypeBind {
			// The -v form, like compose's short syntax, creates a missing
			// host path; the mount API would refuse it.
			b := v.Source + ":" + v.Target
			if v.ReadOnly {
				b += ":ro"
			}
			host.Binds = append(host.Binds, b)
			continue
		}
		host.Mounts = append(host.Mounts, volumeMount(p, v))
	}
	for _, t := range svc.Tmpfs {
		host.Mounts = append(host.Mounts, mount.Mount{Type: mount.TypeTmpfs, Target: t})
	}
	return host
}

// networking attaches the container to the project network under its
// aliases: compose v2 makes the service name one; the server is also
// "redash", the upstream the redash/nginx image proxies to.
func networking(svc types.ServiceConfig, netID string) *network.NetworkingConfig {
	aliases := []string{svc.Name}
	if svc.Name == compose.ServerService {
		aliases = append(aliases, compose.ServerAlias)
	}
	if n := svc.Networks[compose.DefaultNetwork]; n != nil {
		for _, a := range n.Aliases {
			if !slices.Contains(aliases, a) {
				aliases = append(aliases, a)
			}
		}
	}
	return &network.NetworkingConfig{EndpointsConfig: map[string]*network.EndpointSettings{
		netID: {Aliases: aliases},
	}}
}

// volumeMount maps a compose volume; named volumes get the project's name
// for them (compose-go resolves it to "<project>_<name>" when loading).
func volumeMount(p *types.Project, v types.ServiceVolumeConfig) mount.Mount {
	m := mount.Mount{Type: mount.Type(v.Type), Source: v.Source, Target: v.Target, ReadOnly: v.ReadOnly}
	switch v.Type {
	case types.VolumeTypeVolume:
		if v.Source != "" {
			m.Source = compose.VolumeName(p.Name, v.Source)
			if cfg, ok := p.Volumes[v.Source]; ok && cfg.Name != "" {
				m.Source = cfg.Name
			}
		}
		if v.Volume != nil && v.Volume.NoCopy {
			m.VolumeOptions = &mount.VolumeOptions{NoCopy: true}
		}
	case types.VolumeTypeTmpfs:
		m.Source = ""
		if v.Tmpfs != nil && v.Tmpfs.Size > 0 {
			m.TmpfsOptions = &mount.TmpfsOptions{SizeBytes: int64(v.Tmpfs.Size)}
		}
	}
	return m
}

// publishedPort returns the host address for a container port of a service,
// or "" when the service does not publish it.
func publishedPort(svc types.ServiceConfig, target uint32) string {
	for _, p := range svc.Ports {
		if p.Target == target && p.Published != "" && (p.Protocol == "" || p.Protocol == "tcp") {
			ip := p.HostIP
			if ip == "" || ip == "0.0.0.0" || ip == "::" {
				ip = "127.0.0.1"
			}
			if _, err := strconv.Atoi(p.Published); err != nil {
				return ""
			}
			return ip + ":" + p.Published
		}
	}
	return ""
}
