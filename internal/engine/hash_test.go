package engine

import (
	"maps"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

func TestConfigHash(t *testing.T) {
	base := desired()
	server := base.Project.Services["server"]
	server.Name = "server"
	nginx := base.Project.Services["nginx"]
	nginx.Name = "nginx"
	h := func(svc types.ServiceConfig, env map[string]string, key string) string {
		return ConfigHash(svc, env, []byte(key))
	}
	with := func(f func(*types.ServiceConfig)) types.ServiceConfig {
		s := server
		s.Ports = append([]types.ServicePortConfig(nil), server.Ports...)
		s.Environment = maps.Clone(server.Environment)
		f(&s)
		return s
	}
	rotated := maps.Clone(testEnv)
	rotated["REDASH_COOKIE_SECRET"] = "rotated"
	ref := h(server, testEnv, "k")

	tests := []struct {
		name string
		got  string
		same bool
	}{
		{"same input, same hash", h(server, maps.Clone(testEnv), "k"), true},
		{"rotated secret changes an env-file service", h(server, rotated, "k"), false},
		{"other host key changes it", h(server, testEnv, "other"), false},
		{"image", h(with(func(s *types.ServiceConfig) { s.Image = "redash/redash:11" }), testEnv, "k"), false},
		{"command", h(with(func(s *types.ServiceConfig) { s.Command = []string{"server", "--x"} }), testEnv, "k"), false},
		{"port", h(with(func(s *types.ServiceConfig) {
			s.Ports = []types.ServicePortConfig{{Target: 5000, Published: "5001"}}
		}), testEnv, "k"), false},
		{"logging", h(with(func(s *types.ServiceConfig) {
			s.Logging = &types.LoggingConfig{Driver: "awslogs", Options: types.Options{"awslogs-group": "g"}}
		}), testEnv, "k"), false},
		{"volume", h(with(func(s *types.ServiceConfig) {
			s.Volumes = []types.ServiceVolumeConfig{{Type: "bind", Source: "/a", Target: "/b"}}
		}), testEnv, "k"), false},
		{"alias", h(with(func(s *types.ServiceConfig) {
			s.Networks = map[string]*types.ServiceNetworkConfig{"default": {Aliases: []string{"web"}}}
		}), testEnv, "k"), false},
		{"environment override", h(with(func(s *types.ServiceConfig) { s.Environment["REDASH_WEB_WORKERS"] = strp("4") }), testEnv, "k"), false},
		{"restart policy is the engine's, not a recreate", h(with(func(s *types.ServiceConfig) { s.Restart = "always" }), testEnv, "k"), true},
		{"depends_on does not recreate", h(with(func(s *types.ServiceConfig) {
			s.DependsOn = types.DependsOnConfig{"x": {Condition: "service_started"}}
		}), testEnv, "k"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if (tt.got == ref) != tt.same {
				t.Errorf("hash %s vs reference %s: same=%v, want same=%v", tt.got, ref, tt.got == ref, tt.same)
			}
			if len(tt.got) != 64 || strings.Trim(tt.got, "0123456789abcdef") != "" {
				t.Errorf("hash %q is not hex SHA-256", tt.got)
			}
		})
	}

	t.Run("nginx without env_file ignores the env file", func(t *testing.T) {
		if h(nginx, testEnv, "k") != h(nginx, rotated, "k") {
			t.Error("a rotated secret changed nginx's hash; it would be recreated for nothing")
		}
	})
	t.Run("no value in the clear", func(t *testing.T) {
		// The hash is hex; make sure no encoding step leaks the value.
		for _, v := range testEnv {
			if strings.Contains(ref, v) {
				t.Errorf("hash contains %q", v)
			}
		}
	})
}

func TestServiceEnv(t *testing.T) {
	env := map[string]string{"A": "1", "B": "2"}
	tests := []struct {
		name string
		svc  types.ServiceConfig
		want map[string]string
	}{
		{"no env_file: only environment", types.ServiceConfig{ContainerSpec: types.ContainerSpec{
			Environment: types.MappingWithEquals{"X": strp("x")}}}, map[string]string{"X": "x"}},
		{"env_file: all of it", types.ServiceConfig{ContainerSpec: types.ContainerSpec{
			EnvFiles: []types.EnvFile{{Path: "env"}}}}, map[string]string{"A": "1", "B": "2"}},
		{"environment overrides env_file", types.ServiceConfig{ContainerSpec: types.ContainerSpec{
			EnvFiles: []types.EnvFile{{Path: "env"}}, Environment: types.MappingWithEquals{"A": strp("9")}}}, map[string]string{"A": "9", "B": "2"}},
		{"key without value takes it from the env file", types.ServiceConfig{ContainerSpec: types.ContainerSpec{
			Environment: types.MappingWithEquals{"B": nil, "C": nil}}}, map[string]string{"B": "2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := serviceEnv(tt.svc, env); !maps.Equal(got, tt.want) {
				t.Errorf("serviceEnv = %v, want %v", got, tt.want)
			}
		})
	}
}
