package compose

// The names every package shares about one Redash stack, defined once here
// (docker/compose's pkg/api/labels.go is the model): config validates
// against them, the engine converges under them, migrate labels its one-offs
// with them, and the agent writes the files they name. The compose labels
// themselves live with the one package that writes them: engine/labels.go.

// File names inside the agent's --dir (/opt/redash).
const (
	FileName    = "docker-compose.yml"
	EnvFileName = "env"
)

// Service names outside the version layouts (layout.go names the workers).
const (
	// ServerService answers /ping: the readiness check and the ALB's health
	// check. Migrations label their one-offs with it.
	ServerService   = "server"
	NginxService    = "nginx"
	PostgresService = "postgres"
	RedisService    = "redis"
)

// ServerAlias is the server's extra name on the project network: the
// redash/nginx image proxies to redash:5000.
const ServerAlias = "redash"

// Roles (redash:role): which services one instance runs.
const (
	RoleAll    = "all"
	RoleWeb    = "web"    // server and nginx
	RoleWorker = "worker" // scheduler and workers; never migrates, waits for the head
)

// Defaults applied when a setting is left empty.
const (
	DefaultProject       = "redash"
	DefaultNginxImage    = "redash/nginx:latest"
	DefaultPostgresImage = "postgres:15-alpine"
	DefaultRedisImage    = "redis:7-alpine"
)

// Container ports of the images, and the default host ports they publish.
const (
	ServerPort = 5000
	NginxPort  = 80
)

// DefaultNetwork is the network compose creates for every project.
const DefaultNetwork = "default"

// NetworkName is the Docker name of a project's default network, as compose
// names it: <project>_default.
func NetworkName(project string) string { return project + "_" + DefaultNetwork }

// RedashImage is the official image of a Redash version, the default of
// redash:image.
func RedashImage(version string) string { return "redash/redash:" + version }

// VolumeName is the Docker name of a project's named volume, as compose
// names it: <project>_<volume>.
func VolumeName(project, volume string) string { return project + "_" + volume }

// PostgresVolume is the named volume holding provider local's bundled
// database.
const PostgresVolume = "postgres-data"

// BundledDBVolume is the Docker name of a project's bundled database
// volume: what `down --volumes` and prepare-image remove.
func BundledDBVolume(project string) string { return VolumeName(project, PostgresVolume) }

// ContainerNumber is the replica number of every service's one container.
const ContainerNumber = "1"

// ContainerName is the Docker name of a service's container, as compose v2
// names it: <project>-<service>-1.
func ContainerName(project, service string) string {
	return project + "-" + service + "-" + ContainerNumber
}
