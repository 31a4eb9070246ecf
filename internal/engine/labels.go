package engine

import "github.com/redash-agent/redash-agent/internal/compose"

// Labels the engine writes and reads. They are the docker compose ones, so
// `docker compose -p <project> ps/logs` and `docker-compose -p <project> ps`
// see the stack the agent converged (pkg/api/labels.go in docker/compose v2
// is the reference). Values are never secret: no environment value ever
// reaches a label.
const (
	// LabelProject marks every container and network of a project; Observe
	// and Down select by it.
	LabelProject = "com.docker.compose.project"
	// LabelService names the compose service a container runs.
	LabelService = "com.docker.compose.service"
	// LabelContainerNumber is the replica number; the engine runs exactly
	// one replica, so anything but "1" is a duplicate to remove.
	LabelContainerNumber = "com.docker.compose.container-number"
	// LabelOneOff is "True" for `run` containers; ours are always "False".
	LabelOneOff = "com.docker.compose.oneoff"
	// LabelConfigHash is ConfigHash of the service the container was created
	// from; a different value forces a recreate.
	LabelConfigHash = "com.docker.compose.config-hash"
	// LabelImage is the ID of the image the container was created from
	// (compose v2 writes the same label). A tag re-pulled or rebuilt to
	// another image shows as a different ID under the tag, which recreates.
	LabelImage = "com.docker.compose.image"
	// LabelNetwork names the compose network ("default") on the project network.
	LabelNetwork = "com.docker.compose.network"
	// LabelWorkingDir and LabelConfigFiles let `docker compose` find the
	// compose file from a container (they come from the project, when set).
	LabelWorkingDir  = "com.docker.compose.project.working_dir"
	LabelConfigFiles = "com.docker.compose.project.config_files"
	// LabelManagedBy says which program owns the container, for `doctor`
	// and for humans reading `docker inspect`.
	LabelManagedBy = "io.redash-agent.managed-by"
)

// Values the engine compares labels against.
const (
	oneOffFalse     = "False"
	oneOffTrue      = "True"
	containerNumber = compose.ContainerNumber
	managedBy       = "redash-agent"
)
