# redash-agent build. `make build`, `make deb`, `make test`.
# Needs Go and, for `deb`, nfpm (go install github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2).

SHELL := /bin/sh
GO    ?= go
NFPM  ?= $(shell command -v nfpm 2>/dev/null || echo $(HOME)/go/bin/nfpm)

# Debian versions must start with a digit: tags are vMAJOR.MINOR.PATCH, and
# an untagged tree becomes 0.0.0~git<commit> (~ sorts before any release).
VERSION ?= $(shell git describe --tags --match 'v[0-9]*' --dirty 2>/dev/null | sed -e 's/^v//' -e 's/-/+/g' | grep . \
             || echo 0.0.0~git$$(git rev-parse --short HEAD 2>/dev/null || echo unknown))
ARCHES  ?= amd64 arm64
DIST    ?= dist
# Reproducible: the commit time dates the archive members and the build.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH

# Static (no libc, runs on any AMI), no local paths in the binary, version stamped.
GOFLAGS_BUILD := -trimpath -ldflags '-s -w -X main.version=$(VERSION)'
PKG := ./cmd/redash-agent

.PHONY: all build deb test lint clean

all: build

# Native binary for this machine, in bin/.
build:
	CGO_ENABLED=0 $(GO) build $(GOFLAGS_BUILD) -o bin/redash-agent $(PKG)

$(DIST)/linux_%/redash-agent: FORCE
	CGO_ENABLED=0 GOOS=linux GOARCH=$* $(GO) build $(GOFLAGS_BUILD) -o $@ $(PKG)

$(DIST)/redash-agent.8.gz: packaging/redash-agent.8
	@mkdir -p $(DIST)
	gzip -9n < $< > $@

# One .deb per architecture: dist/redash-agent_<version>-1_<arch>.deb.
deb: $(foreach a,$(ARCHES),$(DIST)/linux_$(a)/redash-agent) $(DIST)/redash-agent.8.gz
	@for a in $(ARCHES); do \
		VERSION='$(VERSION)' ARCH=$$a BINARY=$(DIST)/linux_$$a/redash-agent MANPAGE=$(DIST)/redash-agent.8.gz \
			$(NFPM) package --config packaging/nfpm.yaml --packager deb --target $(DIST)/ || exit 1; \
	done

test:
	$(GO) vet ./...
	$(GO) test ./...

clean:
	rm -rf bin $(DIST)

FORCE:
