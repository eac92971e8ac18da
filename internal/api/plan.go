package api

// PlanRequest asks POST /plan to simulate a service on spot traces.
// Durations are Go durations ("90s", "12h"); empty ones take the
// defaults of `spotml plan`.
type PlanRequest struct {
	// Spec is YAML with a Service and, optionally, its Pools.
	Spec string `json:"spec"`
	// Traces name traces of GET /plan/traces, one per spot pool: files
	// under the server's traces directory, or pool/NAME, the history the
	// server recorded for its spot pool NAME.
	Traces       []string `json:"traces,omitempty"`
	InstanceType string   `json:"instanceType,omitempty"`
	Speedup      float64  `json:"speedup,omitempty"`
	Start        string   `json:"start,omitempty"`
	Duration     string   `json:"duration,omitempty"`
	Offsets      int      `json:"offsets,omitempty"`
	Target       float64  `json:"target,omitempty"`
	Boot         string   `json:"boot,omitempty"`
	Load         string   `json:"load,omitempty"`
	Notice       string   `json:"notice,omitempty"`
	QPS          float64  `json:"qps,omitempty"`
}

// PlanTraces lists the traces a plan may replay: the files, then the spot
// pools' histories (pool/NAME).
type PlanTraces struct {
	Dir    string   `json:"dir"`
	Traces []string `json:"traces"`
}
