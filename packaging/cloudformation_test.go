package packaging

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/redash-agent/redash-agent/internal/config"
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
				// PutMetricData names no resource; its bound is the
				// namespace condition (checked in TestCloudFormationScaling).
				metricsOnly := strings.TrimSpace(actions) == "cloudwatch:PutMetricData" &&
					st.path("Condition", "StringEquals", "cloudwatch:namespace").text() == "Redash"
				for _, r := range resources {
					if !metricsOnly && (r.text() == "*" || strings.HasSuffix(r.text(), ":*")) {
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

// TestCloudFormationScaling: the groups, their hooks, scaling policies and
// the instance role's Auto Scaling and CloudWatch permissions are what the
// README's "Scaling" section says, and the hooks are the names the agent
// completes by default.
func TestCloudFormationScaling(t *testing.T) {
	tpl := loadTemplate(t)
	res := tpl.get("Resources")
	readme := readFile(t, "../README.md")
	start := strings.Index(readme, "\n## Scaling\n")
	if start < 0 {
		t.Fatal("README has no \"## Scaling\" section")
	}
	section := readme[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}

	// The instances' redash:project tag, from the launch template.
	var projectTag string
	for _, ts := range res.path("LaunchTemplate", "Properties", "LaunchTemplateData", "TagSpecifications").items() {
		for _, tag := range ts.get("Tags").items() {
			if tag.get("Key").text() == "redash:project" {
				projectTag = tag.get("Value").text()
			}
		}
	}
	if projectTag == "" {
		t.Fatal("the launch template tags no redash:project: the agent would publish Cluster=redash in every stack")
	}

	// The README's table: | group | `redash:role` | scaled on | hooks |
	rowRE := regexp.MustCompile("(?m)^\\| `(\\w+)` \\| `(\\w+)` \\| ([^|]+) \\| `([\\w-]+)`, `([\\w-]+)` \\|$")
	rows := rowRE.FindAllStringSubmatch(section, -1)
	if len(rows) != 2 {
		t.Fatalf("README's Scaling table: %d group rows, want 2 (web and workers)", len(rows))
	}
	for _, row := range rows {
		resource, role, scaledOn, launch, terminate := row[1], row[2], row[3], row[4], row[5]
		g := res.path(resource, "Properties")
		if g.Node == nil {
			t.Errorf("README names group resource %s; the template has none", resource)
			continue
		}
		var roleTag string
		for _, tag := range g.get("Tags").items() {
			if tag.get("Key").text() == "redash:role" && tag.get("PropagateAtLaunch").text() == "true" {
				roleTag = tag.get("Value").text()
			}
		}
		if roleTag != role {
			t.Errorf("%s: propagated redash:role %q, README says %q", resource, roleTag, role)
		}
		if g.get("HealthCheckGracePeriod").text() == "600" {
			t.Errorf("%s still relies on a 600 s grace period", resource)
		}
		hooks := map[string]string{}
		for _, h := range g.get("LifecycleHookSpecificationList").items() {
			hooks[h.get("LifecycleTransition").text()] = h.get("LifecycleHookName").text()
		}
		if hooks["autoscaling:EC2_INSTANCE_LAUNCHING"] != launch || hooks["autoscaling:EC2_INSTANCE_TERMINATING"] != terminate {
			t.Errorf("%s: hooks %v, README says launch %q and terminate %q", resource, hooks, launch, terminate)
		}
		if launch != config.DefaultLaunchHook || terminate != config.DefaultTerminateHook {
			t.Errorf("%s: hooks %q/%q are not the agent's defaults %q/%q", resource, launch, terminate, config.DefaultLaunchHook, config.DefaultTerminateHook)
		}
		// The scaling policy of this group.
		var policy node
		for i := 0; i+1 < len(res.Content); i += 2 {
			r := node{res.Content[i+1]}
			if r.get("Type").text() == "AWS::AutoScaling::ScalingPolicy" && r.path("Properties", "AutoScalingGroupName").text() == "!Ref "+resource {
				policy = r.path("Properties", "TargetTrackingConfiguration")
			}
		}
		if policy.Node == nil {
			t.Errorf("%s has no target tracking policy", resource)
			continue
		}
		switch {
		case strings.Contains(scaledOn, "ALBRequestCountPerTarget"):
			if got := policy.path("PredefinedMetricSpecification", "PredefinedMetricType").text(); got != "ALBRequestCountPerTarget" {
				t.Errorf("%s scales on %q, README says ALBRequestCountPerTarget", resource, got)
			}
		case strings.Contains(scaledOn, "QueuedJobs") && strings.Contains(scaledOn, "GroupInServiceInstances"):
			var names []string
			var expr string
			for _, m := range policy.path("CustomizedMetricSpecification", "Metrics").items() {
				names = append(names, m.path("MetricStat", "Metric", "Namespace").text()+"/"+m.path("MetricStat", "Metric", "MetricName").text())
				if m.get("ReturnData").text() == "true" {
					expr = m.get("Expression").text()
				}
			}
			if !slices.Contains(names, "Redash/QueuedJobs") || !slices.Contains(names, "AWS/AutoScaling/GroupInServiceInstances") || expr != "queued / workers" {
				t.Errorf("%s: metric math over %q returning %q, README says QueuedJobs / GroupInServiceInstances", resource, names, expr)
			}
			// The agent publishes Cluster = its project (redash:project):
			// a policy on another value would scale on a metric that never
			// exists.
			for _, m := range policy.path("CustomizedMetricSpecification", "Metrics").items() {
				if m.path("MetricStat", "Metric", "Namespace").text() != "Redash" {
					continue
				}
				for _, d := range m.path("MetricStat", "Metric", "Dimensions").items() {
					if d.get("Name").text() == "Cluster" && d.get("Value").text() != projectTag {
						t.Errorf("%s scales on Cluster = %q, but the instances' redash:project (what the agent publishes as Cluster) is %q", resource, d.get("Value").text(), projectTag)
					}
				}
			}
		default:
			t.Errorf("%s: README's \"scaled on\" %q names no metric this test knows", resource, scaledOn)
		}
		if !strings.HasPrefix(policy.get("TargetValue").text(), "!Ref ") {
			t.Errorf("%s: the target is not a parameter", resource)
		}
	}

	// The README's permission list, one "- `action` ..." line each, is the
	// role's CloudWatch and Auto Scaling statements, exactly.
	var readmePerms []string
	for _, m := range regexp.MustCompile("(?m)^- `((?:cloudwatch|autoscaling):\\w+)`").FindAllStringSubmatch(section, -1) {
		readmePerms = append(readmePerms, m[1])
	}
	var tplPerms []string
	for _, pol := range res.path("InstanceRole", "Properties", "Policies").items() {
		for _, st := range pol.path("PolicyDocument", "Statement").items() {
			actions := []string{st.get("Action").text()}
			if items := st.get("Action").items(); items != nil {
				actions = nil
				for _, a := range items {
					actions = append(actions, a.text())
				}
			}
			for _, a := range actions {
				if !strings.HasPrefix(a, "cloudwatch:") && !strings.HasPrefix(a, "autoscaling:") {
					continue
				}
				tplPerms = append(tplPerms, a)
				resources := st.get("Resource").items()
				switch {
				case a == "cloudwatch:PutMetricData":
					if st.path("Condition", "StringEquals", "cloudwatch:namespace").text() != "Redash" {
						t.Errorf("PutMetricData without the cloudwatch:namespace = Redash condition")
					}
				case len(resources) != 2:
					t.Errorf("%s on %d resources, want the stack's two groups", a, len(resources))
				default:
					for _, r := range resources {
						if !strings.Contains(r.text(), ":autoScalingGroup:*:autoScalingGroupName/${AWS::StackName}-") {
							t.Errorf("%s on %q: want only this stack's groups", a, r.text())
						}
					}
				}
			}
		}
	}
	slices.Sort(readmePerms)
	slices.Sort(tplPerms)
	if !slices.Equal(readmePerms, tplPerms) || len(tplPerms) != 3 {
		t.Errorf("instance role's CloudWatch/Auto Scaling actions %q, README lists %q; want the same three", tplPerms, readmePerms)
	}
	// The group names the role's ARNs spell out are the groups' own.
	for _, g := range []string{"WebGroup", "WorkerGroup"} {
		name := res.path(g, "Properties", "AutoScalingGroupName").text()
		if !strings.HasPrefix(name, "!Sub ${AWS::StackName}-") {
			t.Errorf("%s is named %q, not the ${AWS::StackName}-... the role's ARNs expect", g, name)
		}
	}
	if res.path("Dashboard", "Type").text() != "AWS::CloudWatch::Dashboard" {
		t.Error("no CloudWatch dashboard")
	}
}
