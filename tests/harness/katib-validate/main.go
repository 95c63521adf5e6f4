// Command katib-validate judges Katib Experiment manifests with Katib's own Go code.
//
// For each YAML file (one or more Experiment documents) it
//  1. decodes the document into Katib's Experiment type, as Katib's admission webhooks do,
//     refusing unknown fields (which the webhook would drop silently);
//  2. applies Katib's defaulting (Experiment.SetDefault) and computes the JSON patch Katib's
//     mutating webhook would answer (submitted object versus defaulted object re-encoded
//     through Katib's types); any operation refuses the document and is printed: the manifests
//     we generate must be fully explicit, so what we render is exactly what Katib stores;
//  3. runs Katib's experiment validator (what the validating webhook runs) and refuses the
//     document with Katib's own messages.
//
// The validator reads algorithm and metrics-collector settings from the katib-config ConfigMap
// through a Kubernetes client. Here that client is controller-runtime's in-memory fake client
// holding one ConfigMap: the katib-config.yaml of Katib's standalone install, embedded at build
// time from the same katib module (see build.sh) or given with --katib-config. Nothing else is
// read through the client for inline batch/v1 Job templates. The webhook's namespace-label check
// needs a live cluster and is covered by the control-plane tests instead.
//
// Exit status: 0 when every document is accepted unchanged, 1 when any is refused, 2 on usage
// or I/O errors.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	configv1beta1 "github.com/kubeflow/katib/pkg/apis/config/v1beta1"
	experimentsv1beta1 "github.com/kubeflow/katib/pkg/apis/controller/experiments/v1beta1"
	"github.com/kubeflow/katib/pkg/controller.v1beta1/consts"
	"github.com/kubeflow/katib/pkg/controller.v1beta1/experiment/manifest"
	"github.com/kubeflow/katib/pkg/webhook/v1beta1/experiment/validator"
)

// standaloneKatibConfig is Katib's standalone katib-config.yaml, base64-encoded, set by build.sh
// with -ldflags -X so that the binary needs no file next to it.
var standaloneKatibConfig string

// errRefused marks a document Katib refuses; other errors are usage or I/O problems.
var errRefused = errors.New("refused")

func main() {
	configPath := flag.String("katib-config", "",
		"katib-config.yaml to validate against (default: Katib's standalone install, built in)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(),
			"usage: %s [--katib-config FILE] EXPERIMENT.yaml...\n", os.Args[0])
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	config, err := katibConfig(*configPath)
	if err != nil {
		fmt.Fprintf(os.Stderr, "katib-validate: %v\n", err)
		os.Exit(2)
	}
	v, err := newValidator(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "katib-validate: %v\n", err)
		os.Exit(2)
	}
	status := 0
	for _, path := range flag.Args() {
		if err := checkFile(v, path); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			if errors.Is(err, errRefused) {
				status = max(status, 1)
			} else {
				status = 2
			}
			continue
		}
		fmt.Printf("%s: accepted unchanged\n", path)
	}
	os.Exit(status)
}

// katibConfig returns the katib-config.yaml text from path, or the built-in one.
func katibConfig(path string) (string, error) {
	if path != "" {
		data, err := os.ReadFile(path)
		return string(data), err
	}
	if standaloneKatibConfig == "" {
		return "", errors.New("no katib-config built in; rebuild with tests/harness/build.sh or pass --katib-config")
	}
	data, err := base64.StdEncoding.DecodeString(standaloneKatibConfig)
	return string(data), err
}

// newValidator builds Katib's experiment validator over a fake client holding katib-config.
func newValidator(config string) (validator.Validator, error) {
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	if err := configv1beta1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	configMap := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: consts.KatibConfigMapName, Namespace: consts.DefaultKatibNamespace},
		Data:       map[string]string{consts.LabelKatibConfigTag: config},
	}
	c := fake.NewClientBuilder().WithScheme(scheme).WithObjects(configMap).Build()
	return validator.New(manifest.New(c)), nil
}

// checkFile checks every YAML document in path; the first refusal ends it.
func checkFile(v validator.Validator, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	documents := 0
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return fmt.Errorf("%w: not YAML: %v", errRefused, err)
		}
		if len(bytes.TrimSpace(raw)) == 0 || string(raw) == "null" {
			continue
		}
		documents++
		if err := checkDocument(v, raw); err != nil {
			return fmt.Errorf("document %d: %w", documents, err)
		}
	}
	if documents == 0 {
		return fmt.Errorf("%w: no Experiment in the file", errRefused)
	}
	return nil
}

// checkDocument decodes, defaults and validates one Experiment as Katib's webhooks would.
func checkDocument(v validator.Validator, raw []byte) error {
	experiment := &experimentsv1beta1.Experiment{}
	strict := json.NewDecoder(bytes.NewReader(raw))
	strict.DisallowUnknownFields()
	if err := strict.Decode(experiment); err != nil {
		// Katib's webhook would drop an unknown field silently; we refuse it instead.
		return fmt.Errorf("%w: Katib's Experiment type cannot hold it: %v", errRefused, err)
	}
	if experiment.APIVersion != experimentsv1beta1.SchemeGroupVersion.String() || experiment.Kind != "Experiment" {
		return fmt.Errorf("%w: apiVersion/kind is %q/%q, want %q/Experiment",
			errRefused, experiment.APIVersion, experiment.Kind, experimentsv1beta1.SchemeGroupVersion)
	}

	// What Katib's mutating webhook answers: a JSON patch from the submitted object to the
	// defaulted one re-encoded through Katib's Go types.
	experiment.SetDefault()
	defaulted, err := json.Marshal(experiment)
	if err != nil {
		return err
	}
	if diff, err := webhookPatch(raw, defaulted); err != nil {
		return err
	} else if diff != "" {
		return fmt.Errorf("%w: Katib's defaulting webhook would change the Experiment "+
			"(SetDefault, then re-encoding through Katib's types):\n%s", errRefused, diff)
	}

	if errs := v.ValidateExperiment(experiment, nil); len(errs) > 0 {
		return fmt.Errorf("%w: Katib's validator: %v", errRefused, errs.ToAggregate())
	}
	return nil
}

// webhookPatch lists the JSON patch from before to after, one operation a line, leaving out
// the two additions every re-encoded object gets and the API server discards on create: an
// empty status (the CRD has a status subresource) and a null creationTimestamp.
func webhookPatch(before, after []byte) (string, error) {
	operations, err := jsonpatch.CreatePatch(before, after)
	if err != nil {
		return "", fmt.Errorf("comparing the Experiment before and after: %v", err)
	}
	var out bytes.Buffer
	for _, op := range operations {
		if op.Operation == "add" && (op.Path == "/status" || op.Path == "/metadata/creationTimestamp") {
			continue
		}
		if op.Operation == "remove" {
			fmt.Fprintf(&out, "  remove %s\n", op.Path)
			continue
		}
		value, _ := json.Marshal(op.Value)
		fmt.Fprintf(&out, "  %s %s %s\n", op.Operation, op.Path, value)
	}
	return out.String(), nil
}
