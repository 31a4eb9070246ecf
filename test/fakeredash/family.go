package main

// family.go: which Redash release the stand-in plays. An image built with
// FAKEREDASH_FAMILY (testenv.FakeFamilyImage) behaves like that release's
// official image wherever the agent can tell the difference; without it the
// stand-in keeps its plain behaviour (any command set, no Redis, no boot
// delay), which the tests that do not care about versions rely on.

import (
	"os"
	"strconv"
	"strings"
)

// familyEnv names the release family: "8", "9", "10", "25.1", "26.3"...
const familyEnv = "FAKEREDASH_FAMILY"

// family is a Redash release family; the zero value is "plain".
type family struct {
	major, minor int
}

// familyFromEnv reads FAKEREDASH_FAMILY; unset or malformed is plain (the
// image builder only writes well-formed values).
func familyFromEnv() family {
	v := os.Getenv(familyEnv)
	majorText, minorText, _ := strings.Cut(v, ".")
	major, err := strconv.Atoi(majorText)
	if err != nil {
		return family{}
	}
	minor, _ := strconv.Atoi(minorText)
	return family{major: major, minor: minor}
}

// plain reports whether no family was chosen.
func (f family) plain() bool { return f.major == 0 }

func (f family) atLeast(major, minor int) bool {
	return f.major > major || f.major == major && f.minor >= minor
}

func (f family) String() string {
	if f.plain() {
		return "plain"
	}
	return strconv.Itoa(f.major) + "." + strconv.Itoa(f.minor)
}

// celery reports the 8.x layout: Celery workers, and a scheduler that is a
// Celery worker with beat.
func (f family) celery() bool { return f.major < 9 }

// requiresCookieSecret: from 10.x redash/settings raises at import when
// REDASH_COOKIE_SECRET is missing (`if SECRET_KEY is None`: an empty value
// passes).
func (f family) requiresCookieSecret() bool { return f.major >= 10 }
