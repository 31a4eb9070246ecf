// Command redash-agent configures and runs Redash on an EC2 instance: it reads
// the instance's redash: tags, fetches secrets from Secrets Manager, writes
// /opt/redash/env and /opt/redash/docker-compose.yml, migrates the database
// once per cluster and converges the containers through the Docker Engine API.
// See README.md; `redash-agent doctor` says what is wrong and how to fix it.
package main

import (
	"os"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

func main() {
	os.Exit(Main(os.Args[1:], os.Stdout, os.Stderr))
}
