// Command placeholder stands in for cmd/redash-agent in the packaging tests
// while the real command does not build: a static Go binary like the real
// one, so lintian and dpkg see a realistic ELF. It prints its version like
// `redash-agent version` and exits 0 for anything else.
package main

import (
	"fmt"
	"os"
)

var version = "dev"

func main() {
	if len(os.Args) > 1 && os.Args[1] == "version" {
		fmt.Println("redash-agent", version, "(packaging placeholder)")
	}
}
