package packaging

import (
	"regexp"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// componentDoc is the EC2 Image Builder component document schema (1.0),
// decoded strictly so an unknown top-level key fails the test.
type componentDoc struct {
	Name          string           `yaml:"name"`
	Description   string           `yaml:"description"`
	SchemaVersion string           `yaml:"schemaVersion"`
	Parameters    []map[string]any `yaml:"parameters"`
	Phases        []struct {
		Name  string `yaml:"name"`
		Steps []struct {
			Name           string    `yaml:"name"`
			Action         string    `yaml:"action"`
			Inputs         yaml.Node `yaml:"inputs"`
			OnFailure      string    `yaml:"onFailure"`
			TimeoutSeconds int       `yaml:"timeoutSeconds"`
			MaxAttempts    int       `yaml:"maxAttempts"`
		} `yaml:"steps"`
	} `yaml:"phases"`
}

func TestImageBuilderComponent(t *testing.T) {
	var doc componentDoc
	dec := yaml.NewDecoder(strings.NewReader(readFile(t, "imagebuilder/redash-agent.yml")))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		t.Fatalf("imagebuilder/redash-agent.yml: %v", err)
	}
	if doc.SchemaVersion != "1.0" || doc.Name == "" {
		t.Errorf("schemaVersion %q name %q, want 1.0 and a name", doc.SchemaVersion, doc.Name)
	}
	// The actions and phases Image Builder's AWSTOE accepts (the subset a
	// Linux component may use).
	actions := map[string]bool{
		"ExecuteBash": true, "ExecuteBinary": true, "ExecuteDocument": true, "S3Download": true, "S3Upload": true,
		"WebDownload": true, "CreateFile": true, "AppendFile": true, "DeleteFile": true, "ReadFile": true,
		"CopyFile": true, "MoveFile": true, "SetFileOwner": true, "SetFileEncoding": true,
		"SetFolderPermissions": true, "SetFilePermissions": true, "CreateFolder": true, "DeleteFolder": true,
		"ListFiles": true, "MoveFolder": true, "CopyFolder": true, "Reboot": true, "UpdateOS": true,
		"Assert": true,
	}
	phases := map[string]bool{"build": true, "validate": true, "test": true}
	stepName := regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]*$`)
	declared := map[string]bool{}
	for _, p := range doc.Parameters {
		for k := range p {
			declared[k] = true
		}
	}

	seen := map[string]bool{}
	var commands []string
	for _, ph := range doc.Phases {
		if !phases[ph.Name] {
			t.Errorf("phase %q: Image Builder runs only build, validate and test", ph.Name)
		}
		seen[ph.Name] = true
		names := map[string]bool{}
		for _, st := range ph.Steps {
			where := ph.Name + "/" + st.Name
			if !stepName.MatchString(st.Name) || names[st.Name] {
				t.Errorf("%s: step names must be unique and alphanumeric", where)
			}
			names[st.Name] = true
			if !actions[st.Action] {
				t.Errorf("%s: action %q is not a Linux AWSTOE action", where, st.Action)
			}
			if st.Inputs.Kind == 0 {
				t.Errorf("%s: no inputs", where)
				continue
			}
			switch st.Action {
			case "ExecuteBash":
				var in struct{ Commands []string }
				if err := st.Inputs.Decode(&in); err != nil || len(in.Commands) == 0 {
					t.Errorf("%s: ExecuteBash needs inputs.commands (%v)", where, err)
				}
				commands = append(commands, in.Commands...)
			case "S3Download":
				var in []struct{ Source, Destination string }
				if err := st.Inputs.Decode(&in); err != nil || len(in) == 0 {
					t.Errorf("%s: S3Download needs a list of source/destination (%v)", where, err)
				}
				for _, d := range in {
					if !strings.HasPrefix(d.Source, "s3://") && !strings.HasPrefix(d.Source, "{{") {
						t.Errorf("%s: source %q is not an S3 URI or a parameter", where, d.Source)
					}
				}
			}
		}
	}
	for p := range phases {
		if !seen[p] {
			t.Errorf("phase %q missing", p)
		}
	}
	all := strings.Join(commands, "\n")
	for _, param := range regexp.MustCompile(`\{\{\s*(\w+)\s*\}\}`).FindAllStringSubmatch(readFile(t, "imagebuilder/redash-agent.yml"), -1) {
		if !declared[param[1]] {
			t.Errorf("{{ %s }} is used but not declared under parameters", param[1])
		}
	}
	for _, want := range []string{"redash-agent prepare-image", "redash-agent version", "is-enabled redash-agent.service", "/opt/redash/env", "docker ps -aq", "redash-agent doctor --offline"} {
		if !strings.Contains(all, want) {
			t.Errorf("no step runs %q", want)
		}
	}
	if strings.Contains(all, "systemctl start redash-agent") || strings.Contains(all, "enable --now redash-agent") {
		t.Error("the component starts the agent during the image build")
	}
}
