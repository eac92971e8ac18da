// Package ec2fake is a loopback EC2 endpoint that behaves as the EC2 API
// reference documents for the calls spotml's aws provider makes:
// RunInstances, DescribeInstances (filters by tag, tag-key and
// instance-state-name; paging by NextToken), TerminateInstances, launch
// templates and instant fleets (fleet.go) and DescribeSpotPriceHistory, in
// EC2's query protocol (a form body in, XML out) with EC2's error shape.
// Spot capacity runs out per zone and instance type
// (InsufficientInstanceCapacity), a max price below the spot price is
// refused (SpotMaxPriceTooLow), and a test interrupts Spot instances as
// EC2 does: terminated, state reason Server.SpotInstanceTermination.
package ec2fake

import (
	"encoding/base64"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

const namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// Instance is an instance as the fake holds it.
type Instance struct {
	ID, ImageID, Type, Subnet, Zone string
	SecurityGroups                  []string
	UserData                        string // decoded
	Spot                            bool
	SpotType, Interruption          string
	MaxPrice                        string
	Profile, KeyName                string
	HTTPTokens                      string
	Tags                            map[string]string
	State                           string
	Reason, ReasonMessage           string
	Launched                        time.Time
	ClientToken                     string
}

// EC2 is one region's fake EC2.
type EC2 struct {
	Region string
	URL    string
	srv    *httptest.Server

	mu        sync.Mutex
	subnets   map[string]string // subnet → zone
	instances map[string]*Instance
	order     []string
	noSpot    map[string]bool    // zone/type without spot capacity
	spotPrice map[string]float64 // type → price
	odPrice   map[string]float64 // type → on-demand price
	templates map[string]*template
	fleets    map[string]fleetResult // by client token
	next      int
	calls     map[string]int
	keys      map[string]bool // access key IDs requests were signed with
}

// New starts a fake EC2 on loopback with the given subnets (ID → zone).
func New(region string, subnets map[string]string) *EC2 {
	e := &EC2{Region: region, subnets: subnets, instances: map[string]*Instance{}, noSpot: map[string]bool{},
		spotPrice: map[string]float64{}, odPrice: map[string]float64{}, templates: map[string]*template{},
		fleets: map[string]fleetResult{}, calls: map[string]int{}, keys: map[string]bool{}}
	e.srv = httptest.NewServer(http.HandlerFunc(e.serve))
	e.URL = e.srv.URL
	return e
}

// Close stops the server.
func (e *EC2) Close() { e.srv.Close() }

// SetSpotCapacity says whether a zone has spot capacity for a type.
func (e *EC2) SetSpotCapacity(zone, typ string, available bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.noSpot[zone+"/"+typ] = !available
}

// SetSpotPrice sets a type's spot price.
func (e *EC2) SetSpotPrice(typ string, price float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.spotPrice[typ] = price
}

// SetOnDemandPrice sets a type's On-Demand price, by which an On-Demand
// fleet's lowest-price strategy chooses.
func (e *EC2) SetOnDemandPrice(typ string, price float64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.odPrice[typ] = price
}

// Instances returns copies of the instances, oldest first.
func (e *EC2) Instances() []Instance {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []Instance
	for _, id := range e.order {
		out = append(out, *e.instances[id])
	}
	return out
}

// Calls is how often an action was called.
func (e *EC2) Calls(action string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.calls[action]
}

// SignedBy says whether a request was signed with the access key ID.
func (e *EC2) SignedBy(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.keys[key]
}

// Interrupt is EC2 reclaiming a Spot instance (after its two-minute
// notice): a one-time Spot instance is terminated.
func (e *EC2) Interrupt(id string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	in, ok := e.instances[id]
	if !ok || !in.Spot {
		return fmt.Errorf("%s is not a Spot instance", id)
	}
	in.State, in.Reason, in.ReasonMessage = "terminated", "Server.SpotInstanceTermination", "Server.SpotInstanceTermination: Spot instance termination"
	return nil
}

// Run makes all pending instances running, as EC2 does within a minute.
func (e *EC2) Run() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, in := range e.instances {
		if in.State == "pending" {
			in.State = "running"
		}
	}
}

// apiError is EC2's error document.
type apiError struct {
	status        int
	code, message string
}

func (e *EC2) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.ParseForm() != nil {
		writeError(w, apiError{http.StatusBadRequest, "InvalidAction", "EC2 takes POST with a form body"})
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		writeError(w, apiError{http.StatusUnauthorized, "AuthFailure", "AWS was not able to validate the provided access credentials"})
		return
	}
	f := r.PostForm
	if f.Get("Version") != "2016-11-15" {
		writeError(w, apiError{http.StatusBadRequest, "InvalidParameterValue", "unknown Version"})
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.calls[f.Get("Action")]++
	// Authorization: AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/ec2/aws4_request, …
	if _, cred, ok := strings.Cut(r.Header.Get("Authorization"), "Credential="); ok {
		key, _, _ := strings.Cut(cred, "/")
		e.keys[key] = true
	}
	var resp any
	var err *apiError
	switch f.Get("Action") {
	case "RunInstances":
		resp, err = e.runInstances(f)
	case "DescribeInstances":
		resp, err = e.describeInstances(f)
	case "TerminateInstances":
		resp, err = e.terminateInstances(f)
	case "CreateLaunchTemplate":
		resp, err = e.createLaunchTemplate(f)
	case "DeleteLaunchTemplate":
		resp, err = e.deleteLaunchTemplate(f)
	case "CreateFleet":
		resp, err = e.createFleet(f)
	case "DescribeSpotPriceHistory":
		resp, err = e.describeSpotPriceHistory(f)
	default:
		err = &apiError{http.StatusBadRequest, "InvalidAction", "The action " + f.Get("Action") + " is not valid for this web service."}
	}
	if err != nil {
		writeError(w, *err)
		return
	}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.Write([]byte(xml.Header))
	xml.NewEncoder(w).Encode(resp)
}

func writeError(w http.ResponseWriter, e apiError) {
	type errXML struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	}
	doc := struct {
		XMLName   xml.Name `xml:"Response"`
		Errors    []errXML `xml:"Errors>Error"`
		RequestID string   `xml:"RequestID"`
	}{Errors: []errXML{{e.code, e.message}}, RequestID: "00000000-0000-4000-8000-000000000000"}
	w.Header().Set("Content-Type", "text/xml;charset=UTF-8")
	w.WriteHeader(e.status)
	w.Write([]byte(xml.Header))
	xml.NewEncoder(w).Encode(doc)
}

// list reads a flattened list: Key.1, Key.2, …
func list(f map[string][]string, key string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := f[key+"."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

func get(f map[string][]string, key string) string {
	if v := f[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func (e *EC2) runInstances(f map[string][]string) (any, *apiError) {
	if get(f, "MinCount") != "1" || get(f, "MaxCount") != "1" {
		return nil, &apiError{http.StatusBadRequest, "MissingParameter", "MinCount and MaxCount are required (this fake makes one instance at a time)"}
	}
	if tok := get(f, "ClientToken"); tok != "" {
		// Idempotent: the same token returns the same instance.
		for _, id := range e.order {
			if in := e.instances[id]; in.ClientToken == tok {
				return reservation("RunInstancesResponse", in), nil
			}
		}
	}
	in, err := e.launch(f)
	if err != nil {
		return nil, err
	}
	return reservation("RunInstancesResponse", in), nil
}

// launch makes one instance from RunInstances' parameters (or a launch
// template's data with a fleet's override), or refuses it as EC2 would.
func (e *EC2) launch(f map[string][]string) (*Instance, *apiError) {
	bad := func(msg string) *apiError { return &apiError{http.StatusBadRequest, "InvalidParameterValue", msg} }
	in := &Instance{ImageID: get(f, "ImageId"), Type: get(f, "InstanceType"), Subnet: get(f, "SubnetId"),
		SecurityGroups: list(f, "SecurityGroupId"), KeyName: get(f, "KeyName"),
		Profile: get(f, "IamInstanceProfile.Name") + get(f, "IamInstanceProfile.Arn"), HTTPTokens: get(f, "MetadataOptions.HttpTokens"),
		Tags: map[string]string{}, State: "pending", Launched: time.Now().UTC().Truncate(time.Second), ClientToken: get(f, "ClientToken")}
	if !strings.HasPrefix(in.ImageID, "ami-") {
		return nil, &apiError{http.StatusBadRequest, "InvalidAMIID.Malformed", fmt.Sprintf("Invalid id: %q", in.ImageID)}
	}
	if in.Type == "" {
		return nil, bad("InstanceType is required")
	}
	zone, ok := e.subnets[in.Subnet]
	if !ok {
		return nil, &apiError{http.StatusBadRequest, "InvalidSubnetID.NotFound", fmt.Sprintf("The subnet ID '%s' does not exist", in.Subnet)}
	}
	in.Zone = zone
	if ud := get(f, "UserData"); ud != "" {
		b, err := base64.StdEncoding.DecodeString(ud)
		if err != nil {
			return nil, &apiError{http.StatusBadRequest, "InvalidUserData.Malformed", "User data must be base64 encoded"}
		}
		if len(b) > 16384 {
			return nil, &apiError{http.StatusBadRequest, "InvalidParameterValue", "User data is limited to 16384 bytes"}
		}
		in.UserData = string(b)
	}
	for i := 1; ; i++ {
		p := fmt.Sprintf("TagSpecification.%d.", i)
		rt, ok := f[p+"ResourceType"]
		if !ok {
			break
		}
		if rt[0] != "instance" {
			continue
		}
		for j := 1; ; j++ {
			k, ok := f[fmt.Sprintf("%sTag.%d.Key", p, j)]
			if !ok {
				break
			}
			in.Tags[k[0]] = get(f, fmt.Sprintf("%sTag.%d.Value", p, j))
		}
	}
	switch get(f, "InstanceMarketOptions.MarketType") {
	case "":
	case "spot":
		in.Spot = true
		in.SpotType = get(f, "InstanceMarketOptions.SpotOptions.SpotInstanceType")
		in.Interruption = get(f, "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior")
		in.MaxPrice = get(f, "InstanceMarketOptions.SpotOptions.MaxPrice")
		if in.SpotType == "" {
			in.SpotType = "one-time"
		}
		if in.Interruption == "" {
			in.Interruption = "terminate"
		}
		if in.SpotType == "one-time" && in.Interruption != "terminate" {
			return nil, bad("InstanceInterruptionBehavior must be terminate for a one-time Spot request")
		}
		if e.noSpot[zone+"/"+in.Type] {
			return nil, &apiError{http.StatusInternalServerError, "InsufficientInstanceCapacity",
				fmt.Sprintf("There is no Spot capacity available that matches your request (%s in %s).", in.Type, zone)}
		}
		if in.MaxPrice != "" {
			mp, err := strconv.ParseFloat(in.MaxPrice, 64)
			if err != nil {
				return nil, bad("MaxPrice is not a number")
			}
			if mp < e.spotPrice[in.Type] {
				return nil, &apiError{http.StatusBadRequest, "SpotMaxPriceTooLow",
					fmt.Sprintf("Your Spot request price of %s is lower than the minimum required Spot request fulfillment price of %g.", in.MaxPrice, e.spotPrice[in.Type])}
			}
		}
	default:
		return nil, bad("MarketType must be spot or capacity-block")
	}
	e.next++
	in.ID = fmt.Sprintf("i-%017x", e.next)
	e.instances[in.ID] = in
	e.order = append(e.order, in.ID)
	return in, nil
}

// Response documents, as the API reference shows them.
type instanceXML struct {
	InstanceID   string     `xml:"instanceId"`
	ImageID      string     `xml:"imageId"`
	State        stateXML   `xml:"instanceState"`
	InstanceType string     `xml:"instanceType"`
	LaunchTime   string     `xml:"launchTime"`
	Zone         string     `xml:"placement>availabilityZone"`
	SubnetID     string     `xml:"subnetId"`
	Lifecycle    string     `xml:"instanceLifecycle,omitempty"`
	Tags         []tagXML   `xml:"tagSet>item"`
	StateReason  *reasonXML `xml:"stateReason,omitempty"`
}

type stateXML struct {
	Code int    `xml:"code"`
	Name string `xml:"name"`
}

type tagXML struct {
	Key   string `xml:"key"`
	Value string `xml:"value"`
}

type reasonXML struct {
	Code    string `xml:"code"`
	Message string `xml:"message"`
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func toXML(in *Instance) instanceXML {
	x := instanceXML{InstanceID: in.ID, ImageID: in.ImageID, State: stateXML{stateCodes[in.State], in.State}, InstanceType: in.Type,
		LaunchTime: in.Launched.Format(time.RFC3339), Zone: in.Zone, SubnetID: in.Subnet}
	if in.Spot {
		x.Lifecycle = "spot"
	}
	keys := make([]string, 0, len(in.Tags))
	for k := range in.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		x.Tags = append(x.Tags, tagXML{k, in.Tags[k]})
	}
	if in.Reason != "" {
		x.StateReason = &reasonXML{in.Reason, in.ReasonMessage}
	}
	return x
}

type reservationXML struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []instanceXML `xml:"instancesSet>item"`
}

func reservation(name string, in *Instance) any {
	return struct {
		XMLName   xml.Name
		RequestID string `xml:"requestId"`
		reservationXML
	}{XMLName: xml.Name{Space: namespace, Local: name}, RequestID: "req-" + in.ID,
		reservationXML: reservationXML{ReservationID: "r-" + in.ID[2:], OwnerID: "123456789012", Instances: []instanceXML{toXML(in)}}}
}

// describeInstances answers with one reservation per instance, pages of
// MaxResults (default all).
func (e *EC2) describeInstances(f map[string][]string) (any, *apiError) {
	ids := list(f, "InstanceId")
	type filter struct {
		name   string
		values []string
	}
	var filters []filter
	for i := 1; ; i++ {
		p := fmt.Sprintf("Filter.%d.", i)
		n, ok := f[p+"Name"]
		if !ok {
			break
		}
		filters = append(filters, filter{n[0], list(f, p+"Value")})
	}
	match := func(in *Instance) bool {
		if len(ids) > 0 {
			found := false
			for _, id := range ids {
				found = found || id == in.ID
			}
			if !found {
				return false
			}
		}
		for _, fl := range filters {
			var have []string
			switch {
			case fl.name == "instance-state-name":
				have = []string{in.State}
			case fl.name == "tag-key":
				for k := range in.Tags {
					have = append(have, k)
				}
			case strings.HasPrefix(fl.name, "tag:"):
				if v, ok := in.Tags[strings.TrimPrefix(fl.name, "tag:")]; ok {
					have = []string{v}
				}
			default:
				continue
			}
			ok := false
			for _, h := range have {
				for _, v := range fl.values {
					ok = ok || h == v
				}
			}
			if !ok {
				return false
			}
		}
		return true
	}
	for _, id := range ids {
		if _, ok := e.instances[id]; !ok {
			return nil, &apiError{http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id)}
		}
	}
	var all []*Instance
	for _, id := range e.order {
		if in := e.instances[id]; match(in) {
			all = append(all, in)
		}
	}
	start := 0
	if tok := get(f, "NextToken"); tok != "" {
		n, err := strconv.Atoi(tok)
		if err != nil {
			return nil, &apiError{http.StatusBadRequest, "InvalidParameterValue", "bad NextToken"}
		}
		start = n
	}
	end := len(all)
	if mr := get(f, "MaxResults"); mr != "" {
		n, _ := strconv.Atoi(mr)
		if n < 5 || n > 1000 || len(ids) > 0 {
			return nil, &apiError{http.StatusBadRequest, "InvalidParameterValue", "MaxResults must be between 5 and 1000 and cannot be used with InstanceIds"}
		}
		end = min(start+n, len(all))
	}
	doc := struct {
		XMLName      xml.Name
		RequestID    string           `xml:"requestId"`
		Reservations []reservationXML `xml:"reservationSet>item"`
		NextToken    string           `xml:"nextToken,omitempty"`
	}{XMLName: xml.Name{Space: namespace, Local: "DescribeInstancesResponse"}, RequestID: "req-describe"}
	for _, in := range all[min(start, len(all)):end] {
		doc.Reservations = append(doc.Reservations, reservationXML{ReservationID: "r-" + in.ID[2:], OwnerID: "123456789012", Instances: []instanceXML{toXML(in)}})
	}
	if end < len(all) {
		doc.NextToken = strconv.Itoa(end)
	}
	return doc, nil
}

func (e *EC2) terminateInstances(f map[string][]string) (any, *apiError) {
	ids := list(f, "InstanceId")
	if len(ids) == 0 {
		return nil, &apiError{http.StatusBadRequest, "MissingParameter", "InstanceId is required"}
	}
	type change struct {
		InstanceID string   `xml:"instanceId"`
		Current    stateXML `xml:"currentState"`
		Previous   stateXML `xml:"previousState"`
	}
	doc := struct {
		XMLName   xml.Name
		RequestID string   `xml:"requestId"`
		Changes   []change `xml:"instancesSet>item"`
	}{XMLName: xml.Name{Space: namespace, Local: "TerminateInstancesResponse"}, RequestID: "req-terminate"}
	for _, id := range ids {
		if _, ok := e.instances[id]; !ok {
			return nil, &apiError{http.StatusBadRequest, "InvalidInstanceID.NotFound", fmt.Sprintf("The instance ID '%s' does not exist", id)}
		}
	}
	for _, id := range ids {
		in := e.instances[id]
		prev := in.State
		if in.State != "terminated" {
			in.State, in.Reason, in.ReasonMessage = "terminated", "Client.UserInitiatedShutdown", "Client.UserInitiatedShutdown: User initiated shutdown"
		}
		doc.Changes = append(doc.Changes, change{id, stateXML{stateCodes[in.State], in.State}, stateXML{stateCodes[prev], prev}})
	}
	return doc, nil
}
