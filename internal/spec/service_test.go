package spec

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestResolve(t *testing.T) {
	yes, no := true, false
	tests := []struct {
		name string
		spec PlacementSpec
		min  int
		want Placement
	}{
		{"unset is prod", PlacementSpec{}, 1,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierProd, MinReplicas: 2, SpreadZones: true, FallbackToOnDemand: true, AutoSpare: true}},
		{"dev", PlacementSpec{Tier: TierDev}, 1,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierDev, MinReplicas: 1}},
		{"prod", PlacementSpec{Tier: TierProd}, 1,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierProd, MinReplicas: 2, SpreadZones: true, FallbackToOnDemand: true, AutoSpare: true}},
		{"prod keeps a larger min", PlacementSpec{Tier: TierProd}, 5,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierProd, MinReplicas: 5, SpreadZones: true, FallbackToOnDemand: true, AutoSpare: true}},
		{"strict", PlacementSpec{Tier: TierStrict}, 1,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierStrict, MinReplicas: 2, BaseOnDemand: 1, SpreadZones: true, FallbackToOnDemand: true}},
		{"strict with a larger base", PlacementSpec{Tier: TierStrict, BaseOnDemand: ptr(3)}, 2,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierStrict, MinReplicas: 2, BaseOnDemand: 3, SpreadZones: true, FallbackToOnDemand: true}},
		{"strict never drops its base", PlacementSpec{Tier: TierStrict, BaseOnDemand: ptr(0)}, 2,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierStrict, MinReplicas: 2, BaseOnDemand: 1, SpreadZones: true, FallbackToOnDemand: true}},
		{"dev with every override", PlacementSpec{Tier: TierDev, BaseOnDemand: ptr(1), OnDemandPercentAboveBase: ptr(30),
			SpreadZones: &yes, FallbackToOnDemand: &yes, StandInAfter: &Duration{0}, Pools: []string{"a"}}, 1,
			Placement{Tier: TierDev, MinReplicas: 1, BaseOnDemand: 1, OnDemandPercentAboveBase: 30,
				SpreadZones: true, FallbackToOnDemand: true, Pools: []string{"a"}}},
		{"prod without spread or fallback", PlacementSpec{Tier: TierProd, SpreadZones: &no, FallbackToOnDemand: &no}, 2,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierProd, MinReplicas: 2, AutoSpare: true}},
		{"prod with spares fixed", PlacementSpec{Tier: TierProd, SpareSpot: "2"}, 2,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierProd, MinReplicas: 2, SpreadZones: true, FallbackToOnDemand: true, SpareSpot: 2}},
		{"prod with spares off", PlacementSpec{Tier: TierProd, SpareSpot: "0"}, 2,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierProd, MinReplicas: 2, SpreadZones: true, FallbackToOnDemand: true}},
		{"strict with auto spares", PlacementSpec{Tier: TierStrict, SpareSpot: SpareAuto}, 2,
			Placement{StandInAfter: Duration{DefaultStandInAfter}, Tier: TierStrict, MinReplicas: 2, BaseOnDemand: 1, SpreadZones: true, FallbackToOnDemand: true, AutoSpare: true}},
		{"out of range overrides are clamped", PlacementSpec{Tier: TierDev, BaseOnDemand: ptr(-1), OnDemandPercentAboveBase: ptr(200), StandInAfter: &Duration{-time.Second}}, 1,
			Placement{Tier: TierDev, MinReplicas: 1, OnDemandPercentAboveBase: 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.spec.Resolve(tt.min); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Resolve(%d) = %+v, want %+v", tt.min, got, tt.want)
			}
		})
	}

	// The result shares no memory with the spec.
	p := PlacementSpec{Pools: []string{"a"}}
	p.Resolve(1).Pools[0] = "changed"
	if p.Pools[0] != "a" {
		t.Errorf("Resolve shares Pools with the spec")
	}
}

func TestMix(t *testing.T) {
	tests := []struct {
		base, pct, n   int
		onDemand, spot int
	}{
		{0, 0, 0, 0, 0},
		{0, 0, 4, 0, 4},
		{1, 0, 1, 1, 0},
		{1, 0, 4, 1, 3},
		{2, 0, 1, 1, 0}, // fewer replicas than the base: all on demand
		{0, 30, 1, 1, 0},
		{0, 30, 10, 3, 7},
		{0, 30, 11, 4, 7}, // 3.3 rounds up
		{1, 30, 10, 4, 6}, // 1 + ceil(9 × 0.3)
		{2, 100, 5, 5, 0},
		{0, 50, 3, 2, 1},
	}
	for _, tt := range tests {
		p := Placement{BaseOnDemand: tt.base, OnDemandPercentAboveBase: tt.pct}
		od, spot := p.Mix(tt.n)
		if od != tt.onDemand || spot != tt.spot {
			t.Errorf("base %d, %d %%: Mix(%d) = %d on demand, %d spot; want %d, %d",
				tt.base, tt.pct, tt.n, od, spot, tt.onDemand, tt.spot)
		}
	}
}

func TestReplicaRange(t *testing.T) {
	tests := []struct {
		name     string
		replicas Replicas
		tier     string
		lo, hi   int
	}{
		{"all defaults", Replicas{}, "", 2, 2},
		{"dev defaults", Replicas{}, TierDev, 1, 1},
		{"min raised by tier", Replicas{Min: 1, Max: 6}, TierProd, 2, 6},
		{"max follows min", Replicas{Min: 4}, TierStrict, 4, 4},
		{"max never below min", Replicas{Min: 1, Max: 1}, TierProd, 2, 2},
	}
	for _, tt := range tests {
		sp := ServiceSpec{Replicas: tt.replicas, Placement: PlacementSpec{Tier: tt.tier}}
		if lo, hi := sp.ReplicaRange(); lo != tt.lo || hi != tt.hi {
			t.Errorf("%s: ReplicaRange() = %d, %d; want %d, %d", tt.name, lo, hi, tt.lo, tt.hi)
		}
	}
}

// TestServiceValidateJSON is how the server sees a service: JSON in,
// Default, Validate.
func TestServiceValidateJSON(t *testing.T) {
	tests := []struct {
		name, json, want string
	}{
		{
			name: "good",
			json: `{"apiVersion":"spotml/v1","kind":"Service","metadata":{"name":"s"},
				"spec":{"model":{"uri":"m.onnx"},"replicas":{"min":2,"max":4,"upscaleDelay":"0s"},
				"placement":{"tier":"strict","baseOnDemand":2},"auth":{"keysFile":"keys.txt"}}}`,
		},
		{
			name: "bad",
			json: `{"apiVersion":"spotml/v1","kind":"Service","metadata":{"name":"s"},
				"spec":{"model":{"uri":"m.onnx"},"placement":{"tier":"strict","baseOnDemand":0},
				"update":{"maxSurge":0},"runtime":{"type":"command"}}}`,
			want: `spec.runtime.command: required with type "command"; the command that starts your model server` + "\n" +
				`spec.placement.baseOnDemand: must be at least 1 with tier "strict": the on-demand base is what keeps serving when every spot replica is evicted at once; set it to 1 or more, or use tier "prod"` + "\n" +
				`spec.update.maxSurge: is 0 and so is maxUnavailable, so an update could never replace a replica; set maxSurge to 1 (start a new replica before stopping an old one) or maxUnavailable to 1 (stop one first)`,
		},
		{
			name: "empty",
			json: `{}`,
			want: `apiVersion: required; use "spotml/v1"` + "\n" +
				`kind: want "Service", got ""` + "\n" +
				`metadata.name: required` + "\n" +
				`spec.model.uri: required; a blob URL such as s3://bucket/model.onnx, or a path in the default store such as outputs/job/out/model.onnx`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Service
			if err := json.Unmarshal([]byte(tt.json), &s); err != nil {
				t.Fatal(err)
			}
			s.Default()
			err := s.Validate()
			got := ""
			if err != nil {
				got = err.Error()
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("errors.Is(err, ErrInvalid) is false")
				}
			}
			if got != tt.want {
				t.Errorf("Validate:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

func TestServiceDefault(t *testing.T) {
	// Validate accepts what Default would fill in.
	s := &Service{APIVersion: APIVersion, Kind: KindService, Metadata: Metadata{Name: "s"},
		Spec: ServiceSpec{Model: Model{URI: "m.onnx"}}}
	if err := s.Validate(); err != nil {
		t.Errorf("Validate before Default: %v", err)
	}

	// Default is idempotent.
	for _, file := range []string{"testdata/good/service-builtin.yaml", "testdata/good/service-command.yaml", "testdata/good/service-minimal.yaml"} {
		docs, err := ParseFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range docs {
			before, _ := json.Marshal(d.Service)
			d.Service.Default()
			after, _ := json.Marshal(d.Service)
			if string(before) != string(after) {
				t.Errorf("Default changed a defaulted service:\n%s\n%s", before, after)
			}
		}
	}

	// Threads follow the CPUs asked for.
	s = &Service{Spec: ServiceSpec{Resources: Resources{CPU: 2.5}}}
	s.Default()
	if s.Spec.Runtime.Threads != 3 {
		t.Errorf("threads for 2.5 CPUs = %d, want 3", s.Spec.Runtime.Threads)
	}
}

// TestExampleService keeps the example in examples/ parsing.
func TestExampleService(t *testing.T) {
	docs, err := ParseFile("../../examples/fashion-mnist/service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(docs) != 1 || docs[0].Service == nil {
		t.Fatalf("want one Service, got %+v", docs)
	}
	sp := docs[0].Service.Spec
	lo, hi := sp.ReplicaRange()
	if lo != 2 || hi != 6 || sp.Placement.Tier != TierProd {
		t.Errorf("replicas %d..%d tier %q; want 2..6 prod", lo, hi, sp.Placement.Tier)
	}
}
