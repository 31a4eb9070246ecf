package packaging

import (
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/redash-agent/redash-agent/internal/testenv"
)

const templateFile = "cloudformation/redash.yaml"

func TestCloudFormationLint(t *testing.T) {
	lint := testenv.RequireTool(t, "cfn-lint", "pip install cfn-lint")
	// cfn-lint exits 0 only without errors and warnings (informational
	// findings exit 8 and are printed too: fix them as well).
	out, err := runErr(5*time.Minute, "", nil, lint, "--", templateFile)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("cfn-lint %s (%v):\n%s", templateFile, err, out)
	}
}

// node is a tolerant view of the template: yaml.v3 keeps !Ref, !GetAtt and
// !Sub as node tags instead of rejecting them.
type node struct{ *yaml.Node }

func (n node) get(key string) node {
	if n.Node == nil || n.Kind != yaml.MappingNode {
		return node{}
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return node{n.Content[i+1]}
		}
	}
	return node{}
}

func (n node) path(keys ...string) node {
	for _, k := range keys {
		n = n.get(k)
	}
	return n
}

func (n node) items() []node {
	if n.Node == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	var out []node
	for _, c := range n.Content {
		out = append(out, node{c})
	}
	return out
}

// text is a scalar's value, or "!Tag value" for a short-form intrinsic.
func (n node) text() string {
	if n.Node == nil {
		return ""
	}
	if n.Kind == yaml.ScalarNode && strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
		return n.Tag + " " + n.Value
	}
	return n.Value
}

func loadTemplate(t *testing.T) node {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(readFile(t, templateFile)), &doc); err != nil {
		t.Fatalf("%s: %v", templateFile, err)
	}
	return node{doc.Content[0]}
}

// walk visits every mapping key in the template.
func walk(n *yaml.Node, visit func(key string, val *yaml.Node)) {
	if n == nil {
		return
	}
	if n.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(n.Content); i += 2 {
			visit(n.Content[i].Value, n.Content[i+1])
		}
	}
	for _, c := range n.Content {
		walk(c, visit)
	}
}

func TestCloudFormationTemplate(t *testing.T) {
	tpl := loadTemplate(t)
	res := tpl.get("Resources")

	typeOf := map[string]string{}
	for i := 0; i+1 < len(res.Content); i += 2 {
		typeOf[res.Content[i].Value] = node{res.Content[i+1]}.get("Type").text()
	}
	secretNames := map[string]bool{}
	for name, typ := range typeOf {
		if typ == "AWS::SecretsManager::Secret" {
			secretNames[name] = true
		}
	}

	t.Run("architecture is complete", func(t *testing.T) {
		have := map[string]bool{}
		for _, typ := range typeOf {
			have[typ] = true
		}
		for _, want := range []string{
			"AWS::ImageBuilder::Component", "AWS::ImageBuilder::ImageRecipe", "AWS::ImageBuilder::InfrastructureConfiguration",
			"AWS::ImageBuilder::Image", "AWS::EC2::LaunchTemplate", "AWS::IAM::Role", "AWS::SecretsManager::Secret",
			"AWS::RDS::DBCluster", "AWS::RDS::DBInstance", "AWS::ElastiCache::CacheCluster", "AWS::EC2::SecurityGroup",
			"AWS::ElasticLoadBalancingV2::LoadBalancer", "AWS::ElasticLoadBalancingV2::TargetGroup",
			"AWS::ElasticLoadBalancingV2::Listener", "AWS::AutoScaling::AutoScalingGroup",
		} {
			if !have[want] {
				t.Errorf("no %s resource", want)
			}
		}
		if len(secretNames) != 4 {
			t.Errorf("%d secrets, want the four seed secrets", len(secretNames))
		}
		if got := res.path("TargetGroup", "Properties", "HealthCheckPath").text(); got != "/ping" {
			t.Errorf("target group health check %q, want /ping", got)
		}
	})

	t.Run("no UserData anywhere", func(t *testing.T) {
		walk(tpl.Node, func(key string, _ *yaml.Node) {
			if strings.EqualFold(key, "UserData") {
				t.Error("the template has UserData: the agent's systemd unit replaces the first-boot script")
			}
		})
	})

	lt := res.path("LaunchTemplate", "Properties", "LaunchTemplateData")
	t.Run("metadata options", func(t *testing.T) {
		md := lt.get("MetadataOptions")
		for k, want := range map[string]string{
			"HttpTokens": "required", "HttpPutResponseHopLimit": "1", "InstanceMetadataTags": "enabled", "HttpEndpoint": "enabled",
		} {
			if got := md.get(k).text(); got != want {
				t.Errorf("MetadataOptions.%s = %q, want %q", k, got, want)
			}
		}
	})

	t.Run("redash tags on the instances", func(t *testing.T) {
		tags := map[string]string{}
		for _, spec := range lt.get("TagSpecifications").items() {
			if spec.get("ResourceType").text() != "instance" {
				continue
			}
			for _, tag := range spec.get("Tags").items() {
				tags[tag.get("Key").text()] = tag.get("Value").text()
			}
		}
		for key, wantIn := range map[string]string{
			"redash:version":        "RedashVersion",
			"redash:db-endpoint":    "DatabaseCluster.Endpoint",
			"redash:redis-endpoint": "Redis.RedisEndpoint",
			"redash:secrets-prefix": "SecretsPrefix",
		} {
			if !strings.Contains(tags[key], wantIn) {
				t.Errorf("instance tag %s = %q, want it built from %s", key, tags[key], wantIn)
			}
		}
	})

	t.Run("instance role reads only the Redash secrets", func(t *testing.T) {
		var sawSecrets, sawKMS, sawBatch bool
		for _, pol := range res.path("InstanceRole", "Properties", "Policies").items() {
			for _, st := range pol.path("PolicyDocument", "Statement").items() {
				actions := st.get("Action").text()
				for _, a := range st.get("Action").items() {
					actions += " " + a.text()
				}
				resources := st.get("Resource").items()
				if st.get("Resource").Kind == yaml.ScalarNode {
					resources = []node{st.get("Resource")}
				}
				// BatchGetSecretValue takes no resource ARN: "*" is its only
				// form, and it returns only what GetSecretValue allows.
				if strings.TrimSpace(actions) == "secretsmanager:BatchGetSecretValue" {
					sawBatch = true
					if len(resources) != 1 || resources[0].text() != "*" {
						t.Errorf("BatchGetSecretValue statement on %d resources, want \"*\"", len(resources))
					}
					continue
				}
				for _, r := range resources {
					if r.text() == "*" || strings.HasSuffix(r.text(), ":*") {
						t.Errorf("statement %q has a wildcard resource %q", st.get("Sid").text(), r.text())
					}
				}
				if strings.Contains(actions, "secretsmanager:") {
					sawSecrets = true
					if strings.TrimSpace(actions) != "secretsmanager:GetSecretValue" {
						t.Errorf("secrets statement allows %q, want only secretsmanager:GetSecretValue", actions)
					}
					got := map[string]bool{}
					for _, r := range resources {
						name, isRef := strings.CutPrefix(r.text(), "!Ref ")
						if !isRef || !secretNames[name] {
							t.Errorf("GetSecretValue on %q: only !Ref of the template's secrets is allowed", r.text())
						}
						got[name] = true
					}
					if len(got) != len(secretNames) {
						t.Errorf("GetSecretValue covers %d of the %d secrets", len(got), len(secretNames))
					}
				}
				if strings.Contains(actions, "kms:") {
					sawKMS = true
					if strings.TrimSpace(actions) != "kms:Decrypt" {
						t.Errorf("kms statement allows %q, want only kms:Decrypt", actions)
					}
					via := st.path("Condition", "StringEquals", "kms:ViaService").text()
					if !strings.Contains(via, "secretsmanager.${AWS::Region}.amazonaws.com") {
						t.Errorf("kms:Decrypt condition kms:ViaService = %q, want secretsmanager in this region", via)
					}
				}
			}
		}
		if !sawSecrets || !sawKMS || !sawBatch {
			t.Errorf("instance role: secrets statement %v, kms statement %v, batch statement %v; want all three", sawSecrets, sawKMS, sawBatch)
		}
		if mp := res.path("InstanceRole", "Properties", "ManagedPolicyArns"); mp.Node != nil {
			t.Errorf("instance role has managed policies %v: they would widen what the instances can read", mp.items())
		}
	})
}
