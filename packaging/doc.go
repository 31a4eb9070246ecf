// Package packaging holds no library code. It is the home of what ships the
// agent: the systemd unit, the default config.yaml (a dpkg conffile), the nfpm
// configuration and maintainer scripts of the .deb, the EC2 Image Builder
// component and the CloudFormation template of the whole architecture.
//
// Its tests check those artifacts against real tools: systemd-analyze, nfpm,
// dpkg-deb, lintian, a debootstrapped Debian root, cfn-lint. They write only
// under t.TempDir() and the debootstrap cache (/var/cache/redash-agent-test or
// $XDG_CACHE_HOME/redash-agent-test), built once per machine.
package packaging
