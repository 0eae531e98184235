// Package manifests owns warmpool's Kubernetes manifests: the generated CRDs
// in crds/, the example pools and Multus networks in examples/, the service
// accounts and RBAC in rbac/, and the install in deploy/ (a Kustomize base
// with the allocator Deployment, the agent DaemonSet and its CNI config,
// and overlays such as an external NATS cluster), with the images'
// Dockerfiles in images/. They are embedded so that tests, the demo and
// the perf harness install exactly the files that are shipped;
// deploy_test.go builds every kustomization and dry-runs it on a real
// apiserver.
package manifests

import (
	"bufio"
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/warmpool/warmpool/api/v1alpha1"
)

//go:embed crds/*.yaml
var crdFiles embed.FS

//go:embed examples/*.yaml
var exampleFiles embed.FS

//go:embed rbac/*.yaml
var rbacFiles embed.FS

// InstallRBAC creates the objects of RBAC() (service accounts, roles and
// bindings) with kube.
func InstallRBAC(ctx context.Context, kube kubernetes.Interface) error {
	objs, err := RBAC()
	if err != nil {
		return err
	}
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ServiceAccount:
			_, err = kube.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = kube.RbacV1().ClusterRoles().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = kube.RbacV1().ClusterRoleBindings().Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = kube.RbacV1().Roles(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = kube.RbacV1().RoleBindings(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
		default:
			err = fmt.Errorf("no client for %T", o)
		}
		if err != nil {
			return fmt.Errorf("install %T: %w", o, err)
		}
	}
	return nil
}

// RBAC returns the objects of rbac/*.yaml (service accounts, roles and
// bindings), decoded into their client-go types.
func RBAC() ([]runtime.Object, error) {
	names, err := fs.Glob(rbacFiles, "rbac/*.yaml")
	if err != nil {
		return nil, err
	}
	var out []runtime.Object
	for _, name := range names {
		b, err := rbacFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		docs := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			doc, err := docs.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			out = append(out, obj)
		}
	}
	return out, nil
}

// CRDs returns the CustomResourceDefinitions in crds/.
func CRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	names, err := fs.Glob(crdFiles, "crds/*.yaml")
	if err != nil {
		return nil, err
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, name := range names {
		b, err := crdFiles.ReadFile(name)
		if err != nil {
			return nil, err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(b, crd); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		crds = append(crds, crd)
	}
	return crds, nil
}

// ExamplePool returns the IPPool of examples/<name>.yaml.
func ExamplePool(name string) (*v1alpha1.IPPool, error) {
	b, err := exampleFiles.ReadFile(path.Join("examples", name+".yaml"))
	if err != nil {
		return nil, err
	}
	pool := &v1alpha1.IPPool{}
	if err := yaml.UnmarshalStrict(b, pool); err != nil {
		return nil, fmt.Errorf("examples/%s.yaml: %w", name, err)
	}
	return pool, nil
}

// InstallCRDs creates or updates warmpool's CRDs and waits until the
// apiserver serves them (Established), bounded by ctx.
func InstallCRDs(ctx context.Context, cfg *rest.Config) error {
	crds, err := CRDs()
	if err != nil {
		return err
	}
	cs, err := apiextensions.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("apiextensions client: %w", err)
	}
	api := cs.ApiextensionsV1().CustomResourceDefinitions()
	for _, crd := range crds {
		_, err := api.Create(ctx, crd, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			var cur *apiextensionsv1.CustomResourceDefinition
			if cur, err = api.Get(ctx, crd.Name, metav1.GetOptions{}); err == nil {
				crd.ResourceVersion = cur.ResourceVersion
				_, err = api.Update(ctx, crd, metav1.UpdateOptions{})
			}
		}
		if err != nil {
			return fmt.Errorf("install CRD %s: %w", crd.Name, err)
		}
	}
	for _, crd := range crds {
		err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			cur, err := api.Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range cur.Status.Conditions {
				if c.Type == apiextensionsv1.NamesAccepted && c.Status == apiextensionsv1.ConditionFalse {
					return false, fmt.Errorf("names not accepted: %s", c.Message)
				}
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s not established: %w", crd.Name, err)
		}
	}
	return nil
}
