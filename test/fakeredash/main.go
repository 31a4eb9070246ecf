// Command fakeredash stands in for the redash/redash and redash/nginx images
// in tests. It is built static and copied into an image FROM scratch, so no
// registry is needed. It plays the entrypoint commands the agent uses:
//
//	server                  answer GET /ping on :5000 with "PONG."
//	worker, scheduler       stay up until SIGTERM
//	nginx                   proxy :80 to redash:5000 (the compose alias)
//	create_db, manage ...   act on the real Postgres named by REDASH_DATABASE_URL
//	env                     print the environment and exit
//
// Each long-running command writes its environment to /proc/1/... readable
// through `docker exec`-less means: GET /env on the server, and a file
// /tmp/env for the others (see server.go).
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fakeredash server|worker|scheduler|nginx|create_db|manage|env")
		os.Exit(2)
	}
	os.Exit(run(os.Args[1], os.Args[2:]))
}
