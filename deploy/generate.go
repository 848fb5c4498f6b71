package deploy

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/lungseg/lungseg/pkg/bus"
	"github.com/lungseg/lungseg/pkg/natsauth"
)

// ShippedModels are the registry models the manifests deploy a segment
// consumer for (the folders of models/, crop models included: `--models
// all` runs them alone too).
var ShippedModels = []string{"resnet50-unet-small", "resnet50-unet-small-crop", "resnet50-unet-small-int8",
	"resnet50-unet-small-int8-crop", "swin-unet-small", "swin-unet-small-crop", "swin-unet-small-int8",
	"swin-unet-small-int8-crop", "unetr-small", "unetr-small-crop", "unetr-small-int8", "unetr-small-int8-crop"}

// ShippedCascades are the cascades of the shipped models (each detector's
// "+crop"), for which the manifests deploy a refine consumer.
var ShippedCascades = []string{"resnet50-unet-small+crop", "resnet50-unet-small-int8+crop", "swin-unet-small+crop",
	"swin-unet-small-int8+crop", "unetr-small+crop", "unetr-small-int8+crop"}

// Files returns the generated files, keyed by path relative to deploy/.
func Files() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, s := range Streams(bus.StreamOptions{Replicas: Replicas}) {
		b, err := MarshalStream(s)
		if err != nil {
			return nil, err
		}
		out[filepath.Join("jetstream", "streams", s.Name+".json")] = b
	}
	for _, c := range Consumers(ShippedModels, ShippedCascades) {
		b, err := MarshalConsumer(c)
		if err != nil {
			return nil, err
		}
		out[filepath.Join("jetstream", "consumers", c.Stream+"."+c.Config.Durable+".json")] = b
	}
	out[filepath.Join("nats", "auth.conf")] = []byte(natsauth.ServerConfig())
	return out, nil
}

// Write writes the generated files under dir (deploy/).
func Write(dir string) error {
	files, err := Files()
	if err != nil {
		return err
	}
	for _, sub := range []string{"jetstream/streams", "jetstream/consumers"} {
		// Remove stale definitions.
		old, _ := filepath.Glob(filepath.Join(dir, sub, "*.json"))
		for _, f := range old {
			rel, _ := filepath.Rel(dir, f)
			if _, keep := files[rel]; !keep {
				if err := os.Remove(f); err != nil {
					return err
				}
			}
		}
	}
	for rel, b := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return fmt.Errorf("deploy: writing %s: %w", rel, err)
		}
	}
	return nil
}
